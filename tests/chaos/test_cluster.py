"""A real 3-node JetStream cluster: nodes killed and restarted, and the owning
loader killed, while a gateway takes traffic and a standby waits.

Streams and KV buckets have 3 replicas, so every write needs 2 of the 3 nodes:
a node kill costs at most a leader election (requests answered 503 meanwhile,
counted as "maybe"), never an acknowledged event.  A seeded loop kills a node
(`kill -9`), keeps it down a few seconds, restarts it on its own store and
waits for traffic to flow again; one round also kills the loader that owns the
stream.  At the end the lake is exactly the acknowledged events, each once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import (
    SKIPPED,
    Sender,
    assert_all_manifests_match,
    assert_exactly_once,
    lake_keys,
    lake_keys_duckdb,
    owner_pid,
    record_of,
    wait_until,
)
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import LoaderProcess, NatsCluster, skipped

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]

SETTINGS: dict[str, Any] = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 5.0,
    "flush_interval_s": 0.5,
    "loader_lease_ttl_s": 5.0,
    "stream_replicas": 3,
    "publish_timeout_s": 5.0,
}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """The cluster stands in for the single server of the process fixtures."""
    cluster = NatsCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("seed", [11])
def test_node_kills_and_an_owner_kill_on_a_cluster_lake_exactly_once(
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
    gw = start_gateway(**settings)
    sender = Sender(gw.base, make=lambda: skipped(source="/cluster"))
    sender.start()
    loaders: dict[int, LoaderProcess] = {}

    def start() -> None:
        proc = start_loader(**settings)
        assert proc.proc is not None
        loaders[proc.proc.pid] = proc

    try:
        start()
        start()
        wait_until(lambda: owner_pid(cluster.url) in loaders, 30, "an owner")
        sender.wait_for(200, timeout=30)
        for round_ in range(4):
            node = rng.choice(cluster.nodes)
            node.kill()
            time.sleep(rng.uniform(1.0, 4.0))
            if round_ == 1:  # the owner dies while the cluster is one node short
                old = wait_until(  # (between the two steps of a hand-over, nobody owns it)
                    lambda: pid if (pid := owner_pid(cluster.url)) in loaders else None,
                    30,
                    "an owner",
                )
                epoch, _ = record_of(cluster.url)
                loaders.pop(old).kill()
                wait_until(
                    lambda old=old, epoch=epoch: (
                        owner_pid(cluster.url) not in (None, old)
                        and record_of(cluster.url)[0] > epoch
                    ),
                    30,
                    "the standby to take over",
                )
                start()
            node.start()
            cluster.wait_jetstream()
            sender.wait_for(len(sender.acked) + 100, timeout=60)
    finally:
        acked = sender.finish()

    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(acked), 60, "every event loaded")
    for proc in loaders.values():
        proc.stop()
    assert_exactly_once(lake_keys(lake, SKIPPED), acked, maybe=sender.unanswered)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), acked, maybe=sender.unanswered)
    assert_all_manifests_match(lake)
    print("statuses:", dict(sender.statuses), "acknowledged:", len(acked))
