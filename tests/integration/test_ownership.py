"""Stream ownership on a real nats-server: the lease, the claim, and fencing.

Deterministic steps of what the chaos batteries do at random: a second loader
cannot take a live lease; once the lease expires it can, and its claim fences
the first loader's saves however long that one was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import KeyValueConfig

from hourglass.bus.jetstream import connect
from hourglass.bus.marks import LEASE_BUCKET, live_gateways
from hourglass.bus.ownership import Ownership, read_loaders
from hourglass.exceptions import ConfigError, Fenced
from hourglass.loader.owner import KvCheckpoints
from hourglass.loader.state import LoaderState, Saved
from tests.integration.support import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

STREAM = "HG_test"
TTL = 1.0


@contextlib.asynccontextmanager
async def _two(url: str) -> AsyncIterator[tuple[Ownership, Ownership]]:
    """Two loaders' sides of ownership, each on its own connection."""
    ncs = [await connect(url, name=f"test-{i}") for i in range(2)]
    try:
        pair = [Ownership(nc.jetstream(timeout=5), ttl_s=TTL, replicas=1) for nc in ncs]
        for own in pair:
            await own.open()
        yield pair[0], pair[1]
    finally:
        for nc in ncs:
            await nc.close()


def test_a_live_lease_is_exclusive_and_an_expired_one_is_taken_over(
    nats_server: NatsServer,
) -> None:
    async def run() -> None:
        async with _two(nats_server.url) as (a, b):
            await _body(a, b)

    async def _body(a: Ownership, b: Ownership) -> None:
        held = await a.try_acquire(STREAM)
        assert held is not None
        assert await b.try_acquire(STREAM) is None, "a live lease is exclusive"
        assert await a.try_acquire(STREAM) is not None, "its holder keeps it"
        await a.announce([STREAM])
        owners, members = await read_loaders(a.js)
        assert owners[STREAM].loader == a.me.loader
        assert [m.owns for m in members] == [[STREAM]]
        deadline = time.monotonic() + 10 * TTL
        while (taken := await b.try_acquire(STREAM)) is None:  # a stops renewing
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.1)
        assert taken is not None
        assert not await a.renew(held), "the old holder finds it lost the lease"
        await b.release(taken)
        assert await a.try_acquire(STREAM) is not None, "a released lease is free at once"

    asyncio.run(run())


def test_a_claim_fences_every_later_save_of_the_previous_owner(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")

    async def run() -> None:
        async with _two(nats_server.url) as (a, b):
            await _body(a, b)

    async def _body(a: Ownership, b: Ownership) -> None:
        first = await KvCheckpoints.claim(a, STREAM, lake, tmp_path / "none.json")
        assert first.epoch == 1 and first.load() == Saved()
        saved = Saved(state=LoaderState(committed_seq=7), staged={"t/x": "t/.tmp-e1-x"})
        await asyncio.to_thread(first.save, saved)
        # b takes the stream over (its lease is another test's matter).
        second = await KvCheckpoints.claim(b, STREAM, lake, tmp_path / "none.json")
        assert second.epoch == 2
        assert second.load() == saved, "the new owner starts from the last save"
        late = Saved(state=LoaderState(committed_seq=99))
        with pytest.raises(Fenced):
            await asyncio.to_thread(first.save, late)  # the old owner, woken up
        await asyncio.to_thread(second.save, Saved(state=LoaderState(committed_seq=8)))
        record, _ = await b.read_record(STREAM)
        assert record is not None and record.epoch == 2 and record.owner == b.me.loader
        with pytest.raises(ConfigError, match="share its lake"):
            await KvCheckpoints.claim(a, STREAM, str(tmp_path / "else"), tmp_path / "none.json")

    asyncio.run(run())


def test_a_checkpoint_file_of_an_earlier_version_is_imported_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    legacy = tmp_path / "loader" / "t.json"
    legacy.parent.mkdir()
    legacy.write_bytes(b'{"committed_seq": 41, "next_close": 1800000000}')

    async def run() -> None:
        async with _two(nats_server.url) as (a, b):
            await _body(a, b)

    async def _body(a: Ownership, b: Ownership) -> None:
        imported = await KvCheckpoints.claim(a, STREAM, str(tmp_path / "lake"), legacy)
        assert imported.load().state.committed_seq == 41 and imported.load().legacy
        assert not legacy.exists() and legacy.with_name("t.json.imported").exists()
        again = await KvCheckpoints.claim(b, STREAM, str(tmp_path / "lake"), legacy)
        assert again.load().state.committed_seq == 41 and again.epoch == 2

    asyncio.run(run())


def test_listing_leases_leaves_no_consumer_and_skips_deleted_keys(nats_server: NatsServer) -> None:
    """Loaders list the gateway leases twice a second: a listing must not leave a
    consumer behind on the server (nats-py's ``keys()`` leaves one for 5 minutes)."""

    async def run() -> None:
        nc = await connect(nats_server.url, name="test")
        try:
            js = nc.jetstream(timeout=5)
            kv = await js.create_key_value(KeyValueConfig(bucket=LEASE_BUCKET, ttl=30))
            await kv.put("gw-a", b"{}")
            await kv.put("gw-b", b"{}")
            await kv.delete("gw-b")  # a clean stop: a delete marker stays
            for _ in range(30):
                assert await live_gateways(js) == {"gw-a"}
            info = await js.stream_info(f"KV_{LEASE_BUCKET}")
            assert info.state.consumer_count == 0
        finally:
            await nc.close()

    asyncio.run(run())


def test_an_owner_drops_earlier_owners_consumers_never_a_later_ones(
    nats_server: NatsServer,
) -> None:
    """A fenced owner that does not know it yet drops "stale" consumers too: it
    must not take away its successor's (the stream stalled while they took turns)."""
    from nats.js.api import ConsumerConfig, StreamConfig

    from hourglass.bus.retention import drop_stale_consumers, loader_consumers, loader_durable

    async def run() -> None:
        nc = await connect(nats_server.url, name="test-consumers")
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name="HG_drop", subjects=["hg.ev.drop"]))
            for epoch in (1, 3, 5):
                await js.add_consumer("HG_drop", ConsumerConfig(durable_name=loader_durable(epoch)))
            assert await drop_stale_consumers(js, "HG_drop", loader_durable(3)) == 1
            left = sorted(await loader_consumers(js, "HG_drop"))
            assert left == [loader_durable(3), loader_durable(5)]
        finally:
            await nc.close()

    asyncio.run(run())
