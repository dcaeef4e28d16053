"""A real 3-node JetStream cluster carrying a partitioned type, loaded by a group
of three loaders, fed by two gateways behind a retrying client, while a seeded
loop kills (-9) and pauses (SIGSTOP) nodes, loaders and gateways.

Streams and KV buckets have 3 replicas, so every write needs 2 of the 3 nodes:
a node kill costs at most a leader election (requests answered 503 meanwhile,
re-sent to the other gateway), never an acknowledged event, and while a node is
down acknowledgements go on.  The type has 4 partitions, so the three loaders
share 4 streams, and each bucket closes once every partition has closed it.
At the end: the lake is exactly the acknowledged events, each once (read with
pyarrow and DuckDB); every bucket with data has one manifest naming every
partition's files; the buckets that ended under load closed within a minute;
and ``hourglass audit`` agrees.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hourglass.bus.jetstream import stream_name
from hourglass.bus.ownership import read_loaders
from hourglass.config import settings_env
from hourglass.lake.layout import part_partition, record_name
from tests.chaos.conftest import (
    SKIPPED,
    Sender,
    _on_bus,
    assert_all_manifests_match,
    assert_exactly_once,
    bucket_folders,
    lake_keys,
    lake_keys_duckdb,
    manifest_at,
    wait_until,
)
from tests.groups import TIMING
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import GatewayProcess, HourglassProcess, LoaderProcess, NatsCluster
from tests.integration.support import skipped as make_skipped

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300), TIMING]

P = 4
SETTINGS: dict[str, Any] = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 5.0,
    "flush_interval_s": 0.5,
    "loader_lease_ttl_s": 5.0,
    "stream_replicas": 3,
    "publish_timeout_s": 5.0,
    "type_partitions": {SKIPPED: P},
}
ACTIONS = ["node", "loader-kill", "loader-pause", "gateway-kill", "gateway-pause"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """The cluster stands in for the single server of the process fixtures."""
    cluster = NatsCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def owners(url: str) -> dict[str, int]:
    """Each partition stream's owning loader pid."""
    found, _ = _on_bus(url, read_loaders)
    return {
        name: lease.pid
        for name, lease in found.items()
        if name.startswith(stream_name(SKIPPED, 0)[:-1])
    }


def pause(proc: HourglassProcess, seconds: float) -> None:
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)


def chaos_end(now: float, at_least_s: float = 58.0) -> float:
    """The first :55 of a minute at least ``at_least_s`` away: the traffic stops 5 s
    before a minute ends, so the last bucket closes soon after, and at least one
    whole minute boundary passes under load."""
    t = math.floor(now / 60) * 60 + 55
    while t - now < at_least_s:
        t += 60
    return t


def inject(
    action: str,
    rng: random.Random,
    cluster: NatsCluster,
    gateways: list[GatewayProcess],
    loaders: list[LoaderProcess],
    sender: Sender,
    new_loader: Callable[[], LoaderProcess],
) -> None:
    """One fault, over when the process (or node) is back."""
    if action == "node":
        node = rng.choice(cluster.nodes)
        node.kill()
        # Two of three nodes are a quorum: acknowledgements go on.
        sender.wait_for(len(sender.acked) + 100, timeout=30)
        time.sleep(rng.uniform(0.5, 2.0))
        node.start()
        cluster.wait_jetstream()
    elif action == "loader-kill":
        victim = rng.choice(loaders)
        victim.kill()
        loaders.remove(victim)
        loaders.append(new_loader())
    elif action == "loader-pause":  # past its lease: it is fenced, then wakes
        pause(rng.choice(loaders), SETTINGS["loader_lease_ttl_s"] + rng.uniform(1, 3))
    elif action == "gateway-kill":
        gw = rng.choice(gateways)
        gw.kill()
        time.sleep(rng.uniform(0.5, 2.0))
        gw.start()
    else:
        pause(rng.choice(gateways), SETTINGS["lease_ttl_s"] + rng.uniform(1, 3))


@pytest.mark.parametrize("seed", [14])
def test_a_loader_group_on_a_cluster_under_kills_and_pauses_lands_each_event_once(
    seed: int,
    nats_server: NatsCluster,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    cluster = nats_server
    settings = {**SETTINGS, "schemas": one_type_schemas}
    lake = tmp_path / "data" / "lake"
    gateways: list[GatewayProcess] = [start_gateway(**settings), start_gateway(**settings)]
    loaders: list[LoaderProcess] = [start_loader(**settings) for _ in range(3)]
    sender = Sender(
        [gw.base for gw in gateways], make=lambda: make_skipped(source="/cluster"), retry=True
    )
    sender.start()
    timeline: list[str] = []
    try:
        wait_until(lambda: len(owners(cluster.url)) == P, 30, "every partition owned")
        sender.wait_for(200, timeout=30)
        end = chaos_end(time.time())
        while time.time() < end - 12:
            action = rng.choice(ACTIONS)
            timeline.append(f"{time.time() - end:+.0f}s {action}")
            inject(
                action, rng, cluster, gateways, loaders, sender, lambda: start_loader(**settings)
            )
            sender.wait_for(len(sender.acked) + 100, timeout=60)
        time.sleep(max(0.0, end - time.time()))
    finally:
        acked = sender.finish()
    stopped = dt.datetime.fromtimestamp(time.time(), dt.UTC)

    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(acked), 60, "every event loaded")
    # The group ends balanced: every partition owned, none by more than its share.
    live = {proc.proc.pid for proc in loaders if proc.proc is not None}

    def balanced() -> dict[str, int] | None:
        held = owners(cluster.url)
        share = math.ceil(P / len(live))
        fair = set(held.values()) <= live and all(
            list(held.values()).count(pid) <= share for pid in live
        )
        return held if len(held) == P and fair else None

    wait_until(balanced, 60, "every partition owned by a live loader, none over its share")
    for gw in gateways:
        gw.stop()  # no gateway alive: the last minute closes once it has ended and drained

    def all_closed() -> bool:
        folders = bucket_folders(lake, SKIPPED)
        return bool(folders) and all(manifest_at(f) is not None for f in folders)

    wait_until(all_closed, 90, "every bucket with data closed")
    for proc in loaders:
        proc.stop()
    keys = lake_keys(lake, SKIPPED)
    assert_exactly_once(keys, acked, maybe=sender.unanswered)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), acked, maybe=sender.unanswered)
    manifests = assert_all_manifests_match(lake)
    under_load = []
    for folder, manifest in manifests.items():
        assert manifest.partitions == P
        assert {part_partition(f.name) for f in manifest.files} <= set(range(P))
        if not manifest.compacted_from:  # compaction's swap drops the records
            assert all((folder / record_name(p)).exists() for p in range(P)), folder
        if manifest.bucket_end < stopped:
            under_load.append(manifest.close_delay_s)
    assert sum(m.count for m in manifests.values()) == len(keys)
    # At least one minute ended under load, and every such minute closed in time.
    assert under_load and max(under_load) <= 60, under_load

    audit = subprocess.run(
        [sys.executable, "-m", "hourglass", "audit", "--type", SKIPPED],
        env={**os.environ, **settings_env(loaders[0].settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    print(
        "statuses:",
        dict(sender.statuses),
        "acknowledged:",
        len(acked),
        "close delays under load:",
        under_load,
        "timeline:",
        timeline,
    )
