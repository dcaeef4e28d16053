"""A partitioned type end to end: real nats-server, gateway, loaders.

The type's events go to 4 streams by ``(source, id)`` (``bus/jetstream.py``),
each loaded by its own stream loader into the type's one lake folder, read
back with pyarrow and DuckDB.  How its buckets close (a record per partition,
one manifest, ``loader/close.py``), and ``hourglass audit`` summing what the
gateways published to the streams, are in tests/chaos/test_cluster.py and
tests/integration/test_s3_lake.py, which wait for minutes to end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from hourglass.bus.jetstream import PARTITIONS_KEY, first_stored, partition_of, stream_name
from hourglass.bus.ownership import read_loaders
from hourglass.config import settings_env
from hourglass.lake.layout import PARTITIONS
from tests.chaos.conftest import (
    REGISTRY,
    SKIPPED,
    Sender,
    assert_all_manifests_match,
    assert_exactly_once,
    keys_of_events,
    lake_keys,
    lake_keys_duckdb,
    tmp_files,
    wait_until,
)
from tests.integration.conftest import StartGateway, StartLoader, base_settings
from tests.integration.support import (
    LoaderProcess,
    NatsServer,
    gateway_refuses,
    post,
    read_stream,
    skipped,
)

pytestmark = pytest.mark.timeout(120)

P = 4
FAST: dict[str, Any] = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 3.0,
    "flush_interval_s": 0.5,
    "loader_lease_ttl_s": 3.0,
    "type_partitions": {SKIPPED: P},
}


def stream_metadata(url: str, name: str) -> dict[str, str]:
    async def run() -> dict[str, str]:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(name)
            return dict(info.config.metadata or {})
        finally:
            await nc.close()

    return asyncio.run(run())


def owned(loader: LoaderProcess) -> int:
    """Partitions of the type this loader process claimed, from its log."""
    return sum(
        1
        for line in loader.log_path.read_text().splitlines()
        if "owner of the stream" in line and f"stream={SKIPPED}/" in line
    )


def test_a_partitioned_type_lands_once_and_refuses_another_count(
    start_gateway: StartGateway,
    start_loader: StartLoader,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    """Two loaders share the four partitions; the one that owns most is killed
    (-9) while events keep coming, and the other takes its partitions over."""
    gw = start_gateway(**FAST)
    batches = [[skipped(source=f"/p/{i % 3}") for _ in range(200)] for i in range(8)]
    for batch in [*batches[:3], batches[1]]:  # the second one twice: a client's retry
        r = post(gw.base, batch)
        assert r.status_code == 200, r.text

    # On the bus: each event in the partition its (source, id) names, and only there.
    seen: Counter[tuple[str, str]] = Counter()
    for p in range(P):
        records = read_stream(nats_server.url, stream_name(SKIPPED, p))
        assert records, f"partition {p} got nothing"
        assert {partition_of(r["source"], r["id"], P) for r in records} == {p}
        seen.update((r["source"], r["id"]) for r in records)
        metadata = stream_metadata(nats_server.url, stream_name(SKIPPED, p))
        assert metadata[PARTITIONS_KEY] == str(P)
    assert seen == Counter(keys_of_events([e for b in batches[:3] for e in b] + batches[1]))

    loaders = [start_loader(**FAST), start_loader(**FAST)]
    wait_until(lambda: sum(map(owned, loaders)) >= P, 30, "every partition owned")
    victim, survivor = sorted(loaders, key=owned, reverse=True)
    for batch in batches[3:5]:
        assert post(gw.base, batch).status_code == 200
    victim.kill()
    for batch in batches[5:]:
        assert post(gw.base, batch).status_code == 200
        time.sleep(0.5)
    wait_until(lambda: owned(survivor) >= P, 30, "the survivor owns every partition")
    assert "took the stream over" in survivor.log_path.read_text()
    sent = [e for b in batches for e in b]
    lake = survivor.lake
    # How such a type's buckets close (a record per partition, one manifest) is
    # the cluster chaos test's and the S3 lake test's: they wait for minutes.
    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(keys_of_events(sent)), 30, "loaded")
    assert_exactly_once(lake_keys(lake, SKIPPED), keys_of_events(sent))
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), keys_of_events(sent))
    agreed = msgspec.json.decode((lake / SKIPPED / PARTITIONS).read_bytes())
    assert agreed["partitions"] == P

    # The type has 4 streams now: 2 is refused, by a gateway and by a loader.
    other = base_settings(nats_server, tmp_path, **{**FAST, "type_partitions": {SKIPPED: 2}})
    assert "cannot change" in gateway_refuses(other)
    survivor.stop()
    refused = subprocess.run(
        [sys.executable, "-m", "hourglass", "loader"],
        env={**os.environ, **settings_env(other)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "cannot change" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_type_of_one_partition_keeps_its_stream_and_refuses_more(
    start_gateway: StartGateway, nats_server: NatsServer, tmp_path: Path
) -> None:
    gw = start_gateway(bucket="1m")
    assert post(gw.base, [skipped()]).status_code == 200
    gw.stop()
    assert read_stream(nats_server.url, stream_name(SKIPPED)), "HG_<type>, as before"
    more = base_settings(nats_server, tmp_path, bucket="1m", type_partitions={SKIPPED: P})
    message = gateway_refuses(more)
    assert f"{SKIPPED} has 1 partition(s) on the bus" in message and "cannot change" in message


def shares(url: str) -> dict[str, list[str]]:
    """What each live loader says it owns (its ``member.<loader>`` record)."""

    async def run() -> dict[str, list[str]]:
        nc = await nats.connect(url)
        try:
            _, members = await read_loaders(nc.jetstream())
            return {m.loader: sorted(m.owns) for m in members}
        finally:
            await nc.close()

    return asyncio.run(run())


def test_loaders_share_the_streams_and_hand_them_over_as_the_group_changes(
    start_gateway: StartGateway, start_loader: StartLoader, nats_server: NatsServer
) -> None:
    """One loader, then two, then three, then two again, while events flow: each
    owns at most ceil(streams / loaders), every stream has an owner, and every
    acknowledged event is in the lake once."""
    streams = len(REGISTRY) - 1 + P + 1  # the other types, SKIPPED's partitions, _failed
    url = nats_server.url
    gw = start_gateway(**FAST)
    sender = Sender(gw.base, make=lambda: skipped(source="/group"))
    sender.start()

    def balanced(loaders: int) -> bool:
        owned = shares(url)
        counts = sorted(len(v) for v in owned.values())
        every = sorted(s for v in owned.values() for s in v)
        share = -(-streams // loaders)
        return (
            len(owned) == loaders
            and len(every) == streams == len(set(every))
            and max(counts) <= share
        )

    try:
        first = start_loader(**FAST)
        wait_until(lambda: balanced(1), 30, "one loader owning every stream")
        sender.wait_for(500)
        second = start_loader(**FAST)
        wait_until(lambda: balanced(2), 30, "two loaders sharing the streams")
        assert "handing the stream over" in first.log_tail()
        third = start_loader(**FAST)
        wait_until(lambda: balanced(3), 30, "three loaders sharing the streams")
        sender.wait_for(len(sender.acked) + 500)
        second.stop()  # a clean stop: its streams are taken by the two left
        wait_until(lambda: balanced(2), 30, "two loaders again")
        sender.wait_for(len(sender.acked) + 500)
    finally:
        acked = sender.finish()
    lake = first.lake
    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(acked), 30, "every event loaded")
    first.stop()
    third.stop()
    # A stop whose flush outlasts the lease (a loaded machine) is fenced and
    # leaves its staged part behind, swept by the next recovery: one more, alone.
    final = start_loader(**FAST)
    wait_until(
        lambda: all(
            f"recovered stream={SKIPPED} partition={p} " in final.log_path.read_text()
            for p in range(P)
        ),
        30,
        "the last owner's recovery of every partition",
    )
    final.stop()
    assert_exactly_once(lake_keys(lake, SKIPPED), acked, maybe=sender.unanswered)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), acked, maybe=sender.unanswered)
    assert_all_manifests_match(lake)
    assert tmp_files(lake) == [], "a staged file survived the last recovery"


def test_the_first_stored_message_bounds_every_partition_s_first_bucket(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    """``first_stored`` (the loader's hint for where partitions start closing):
    the time of the oldest message over the type's partition streams, as the
    bus stored it."""
    started = time.time()
    gw = start_gateway(**FAST)
    gw.stop()  # streams exist; no markers from here on

    async def first() -> float | None:
        nc = await nats.connect(nats_server.url)
        try:
            names = [stream_name(SKIPPED, p) for p in range(P)]
            return await first_stored(nc.jetstream(), names)
        finally:
            await nc.close()

    assert asyncio.run(first()) is not None, "the stopped gateway's last markers"
    before = time.time()
    gw2 = start_gateway(**FAST)
    assert post(gw2.base, [skipped()]).status_code == 200
    gw2.stop()
    found = asyncio.run(first())
    assert found is not None and started - 1 < found < before, "the oldest, not the newest"
