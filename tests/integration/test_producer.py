"""The Python SDK against a real gateway and bus: outages, a full spool,
rejections, another CloudEvents client alongside, and the asyncio face."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cloudevents.core.bindings.http import to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from hourglass.bus.embedded import free_port
from hourglass.lake.failed import FAILED_DIR
from hourglass.producer import AsyncProducer, Producer, SpoolFull
from hourglass.replay import replay
from hourglass.schemas import DEMO_SCHEMAS_DIR
from tests.chaos.conftest import duck, wait_until
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import GatewayProcess, NatsServer, events_of, failed, post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SKIPPED = "music.SongSkipped"
BACKGROUND = ("hourglass-sender", "spool-fsync")


@pytest.fixture(autouse=True)
def producer_threads_end() -> Iterator[None]:
    """A closed producer leaves no thread behind, and one that dies with an
    error is charged to the test that closed it."""
    yield
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        left = [t.name for t in threading.enumerate() if t.name in BACKGROUND]
        if not left:
            return
        time.sleep(0.02)
    raise AssertionError(f"threads still running after close: {left}")


def song(n: int) -> dict[str, Any]:
    """Valid ``music.SongSkipped`` data."""
    return {
        "user_id": str(uuid.UUID(int=n + 1)),
        "track_id": f"t-{n}",
        "skipped_at": "2026-11-26T12:00:00.123Z",
        "position_ms": n % 100_000,
    }


def bus_ids(nats_server: NatsServer) -> Counter[str]:
    return Counter(e["id"] for e in events_of(nats_server.url, SKIPPED))


def assert_once_each(found: Counter[str], expected: list[str]) -> None:
    twice = [i for i, n in found.items() if n > 1]
    assert not twice, f"{len(twice)} ids on the bus more than once, e.g. {twice[:3]}"
    missing = set(expected) - set(found)
    assert not missing, f"{len(missing)} emitted ids never arrived, e.g. {list(missing)[:3]}"
    assert set(found) == set(expected)


def assert_counters_settled(producer: Producer, spooled: int, rejected: int = 0) -> None:
    """Every spooled event answered: accepted or rejected, none left in the spool;
    each retry re-sent at least one event, and ``sent`` counts every attempt."""
    c = producer.stats()
    assert c.spooled == spooled
    assert c.acknowledged + c.rejected == spooled
    assert c.rejected == rejected
    assert c.sent >= c.acknowledged + c.rejected + c.retries
    assert c.spool_bytes == 0
    assert producer.spool.unacked == 0


def test_gateway_down_while_emitting_10000_events(
    start_gateway: StartGateway, nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    with Producer(f"http://127.0.0.1:{port}", spool_dir=tmp_path / "spool") as producer:
        first = [producer.emit(SKIPPED, song(n)) for n in range(10_000)]
        assert not producer.flush(timeout=0.3), "nothing listens yet: nothing is answered"
        assert producer.stats().acknowledged == 0
        assert producer.stats().retries >= 1
        assert producer.stats().spool_bytes > 10_000 * 100

        gw = start_gateway(port=port)
        assert producer.flush(timeout=60), producer.stats()
        assert_once_each(bus_ids(nats_server), first)
        assert_counters_settled(producer, 10_000)

        gw.kill()  # a gateway that was up goes away between two emits
        second = [producer.emit(SKIPPED, song(n)) for n in range(10_000, 12_000)]
        time.sleep(0.5)
        gw.start()
        assert producer.flush(timeout=60), producer.stats()
    assert_once_each(bus_ids(nats_server), first + second)
    assert_counters_settled(producer, 12_000)


def test_spool_full_blocks_then_raises_and_loses_nothing(
    start_gateway: StartGateway, nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    producer = Producer(
        f"http://127.0.0.1:{port}",
        spool_dir=tmp_path / "spool",
        max_spool_bytes=4096,
        emit_timeout=0.5,
    )
    try:
        emitted: list[str] = []
        with pytest.raises(SpoolFull) as raised:
            for n in range(100):
                started = time.monotonic()
                emitted.append(producer.emit(SKIPPED, song(n)))
        blocked = time.monotonic() - started
        assert 0.5 <= blocked < 3, f"emit gave up after {blocked:.2f}s, emit_timeout is 0.5"
        message = str(raised.value)
        assert "max_spool_bytes 4096" in message
        assert "unreachable" in message
        assert 5 < len(emitted) < 40
        assert producer.stats().spooled == len(emitted)

        start_gateway(port=port)
        assert producer.flush(timeout=60), producer.stats()
        assert_once_each(bus_ids(nats_server), emitted)
        later = producer.emit(SKIPPED, song(1000))  # room again
        assert producer.flush(timeout=30)
        assert_once_each(bus_ids(nats_server), [*emitted, later])
        assert_counters_settled(producer, len(emitted) + 1)
    finally:
        producer.close(timeout=5)


def _cloudevent(event_id: str) -> CloudEvent:
    attributes = {"type": SKIPPED, "source": "/cloudevents-sdk", "id": event_id}
    return CloudEvent({**attributes, "specversion": "1.0"}, song(7))


def test_cloudevents_sdk_client_alongside_the_producer(
    gateway: GatewayProcess, nats_server: NatsServer, tmp_path: Path
) -> None:
    ours: list[str] = []
    fmt = JSONFormat()
    with Producer(gateway.base, spool_dir=tmp_path / "spool", source="/sdk") as producer:

        def emit_many() -> None:
            for n in range(500):
                ours.append(producer.emit(SKIPPED, song(n)))
                if n % 50 == 0:
                    time.sleep(0.01)

        emitter = threading.Thread(target=emit_many)
        emitter.start()
        theirs = []
        try:
            with httpx.Client(base_url=gateway.base, timeout=30) as client:
                for i in range(40):
                    message = to_structured(_cloudevent(f"ce-{i}"), fmt)
                    r = client.post("/v1/events", headers=message.headers, content=message.body)
                    assert r.status_code == 200, r.text
                    theirs.append(f"ce-{i}")
            body = (
                b"[" + b",".join(fmt.write(_cloudevent(f"ce-batch-{i}")) for i in range(20)) + b"]"
            )
            r = post(gateway.base, body)
            assert r.json() == {"accepted": 20, "rejected": []}
            theirs += [f"ce-batch-{i}" for i in range(20)]
        finally:
            emitter.join(30)
        assert producer.flush(timeout=30)
        assert_counters_settled(producer, 500)

    stored = events_of(nats_server.url, SKIPPED)
    assert_once_each(Counter(e["id"] for e in stored), ours + theirs)
    sources = {e["id"]: e["source"] for e in stored}
    assert {sources[i] for i in ours} == {"/sdk"}
    assert {sources[i] for i in theirs} == {"/cloudevents-sdk"}


def test_on_rejected_gets_the_event_and_the_reason(
    gateway: GatewayProcess, nats_server: NatsServer, tmp_path: Path
) -> None:
    rejected: list[tuple[bytes, str]] = []
    with Producer(
        gateway.base,
        spool_dir=tmp_path / "spool",
        linger_ms=300,  # the six emits below go out as one batch
        on_rejected=lambda event, reason: rejected.append((event, reason)),
    ) as producer:
        good = [producer.emit(SKIPPED, song(n)) for n in range(3)]
        bad = producer.emit(SKIPPED, {**song(3), "position_ms": "soon"})
        when = dt.datetime(2026, 11, 26, 12, 0, 1, 500_000, tzinfo=dt.UTC)
        good.append(producer.emit(SKIPPED, song(4), source="/mine", id="my-id", time=when))
        good.append(producer.emit(SKIPPED, song(5)))
        assert producer.flush(timeout=30)
        assert_counters_settled(producer, 6, rejected=1)
        c = producer.stats()
        assert (c.sent, c.acknowledged, c.retries) == (6, 5, 0)

    assert len(rejected) == 1
    event_bytes, reason = rejected[0]
    event = msgspec.json.decode(event_bytes)
    assert event["id"] == bad
    assert event["type"] == SKIPPED
    assert event["data"]["position_ms"] == "soon"
    assert "position_ms" in reason

    stored = {e["id"]: e for e in events_of(nats_server.url, SKIPPED)}
    assert set(stored) == set(good)
    assert stored["my-id"]["source"] == "/mine"
    assert stored["my-id"]["time"] == "2026-11-26T12:00:01.500000Z"
    assert [r["id"] for r in failed(nats_server.url)] == [bad]


async def test_async_producer(
    gateway: GatewayProcess, nats_server: NatsServer, tmp_path: Path
) -> None:
    async with AsyncProducer(gateway.base, spool_dir=tmp_path / "spool") as producer:
        ids = await asyncio.gather(*(producer.emit(SKIPPED, song(n)) for n in range(200)))
        assert len(set(ids)) == 200
        assert await producer.flush(timeout=30)
        c = producer.stats()
        assert (c.spooled, c.acknowledged, c.rejected, c.spool_bytes) == (200, 200, 0, 0)
        more = await producer.emit(SKIPPED, song(200), id="async-last")
    assert more == "async-last"  # close flushed it
    found = Counter(e["id"] for e in await asyncio.to_thread(events_of, nats_server.url, SKIPPED))
    assert_once_each(found, [*ids, more])


def test_a_rejected_sdk_event_replayed_after_a_schema_fix_lands_once(
    start_gateway: StartGateway, start_loader: StartLoader, tmp_path: Path
) -> None:
    """The SDK counts a rejected event as answered, so its sequence is below the
    producer's floor by the time it is replayed: ``replay-failed`` sends it
    without the sequence, and the loader keeps it by its key."""
    strict = tmp_path / "strict"
    strict.mkdir()
    avro = msgspec.json.decode((DEMO_SCHEMAS_DIR / "SongSkipped.avsc").read_bytes())
    avro["fields"].append({"name": "mood", "type": "string"})  # v1: a field no event sends
    (strict / "SongSkipped.avsc").write_bytes(msgspec.json.encode(avro))
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    shutil.copy(DEMO_SCHEMAS_DIR / "SongSkipped.avsc", fixed / "SongSkipped.avsc")
    fast = {"bucket": "1m", "flush_interval_s": 0.5, "marker_interval_s": 0.5}
    gw = start_gateway(schemas=str(strict), **fast)  # creates the streams
    loader = start_loader(schemas=str(fixed), **fast)
    rejected: list[str] = []
    spool = tmp_path / "spool"
    with Producer(gw.base, spool_dir=spool, on_rejected=lambda e, r: rejected.append(r)) as p:
        kept = p.emit(SKIPPED, song(0) | {"mood": "calm"})
        lost = p.emit(SKIPPED, song(1))  # no mood: rejected by v1
        assert p.flush(timeout=30)
        later = p.emit(SKIPPED, song(2) | {"mood": "glad"})  # its floor is past `lost`
        assert p.flush(timeout=30)
    assert len(rejected) == 1 and "mood" in rejected[0], rejected
    failed_dir = loader.lake / FAILED_DIR

    # Part files only: a staged .tmp- file may be renamed while DuckDB opens it.
    parts = f"read_parquet('{loader.lake}/{SKIPPED}/**/part-*.parquet')"

    def lake_ids() -> set[str]:
        if not any((loader.lake / SKIPPED).rglob("part-*.parquet")):
            return set()
        return {i for (i,) in duck(f"select id from {parts}")}  # noqa: S608

    wait_until(
        lambda: lake_ids() == {kept, later} and any(failed_dir.rglob("part-*.parquet")),
        30,
        "the accepted events in the lake, the rejected one in _failed",
    )
    gw.stop()
    gw = start_gateway(schemas=str(fixed), **fast)
    result = replay(loader.lake, SKIPPED, gw.base)
    assert (result.found, result.accepted, result.rejected) == (1, 1, [])
    wait_until(lambda: lake_ids() == {kept, lost, later}, 30, "the replayed event in the lake")
    time.sleep(1.0)  # a second copy would show now
    assert duck(f"select count(*) from {parts}") == [(3,)]  # noqa: S608
