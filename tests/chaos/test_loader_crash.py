"""kill -9 of the loader at every dangerous point, then a restart: the lake is exact.

Each case runs a real nats-server, gateway and loader.  Before the loader starts,
the bus holds one gateway request (current minute) and a backlog published as a
gateway would but stamped in three earlier minutes, with duplicates in the same
message, in a later message and in a later bucket.  So the loader's first flush
writes four parts, then closes four buckets (three with rows, one idle), in this
order of durable writes (``lake.before_rename`` counts them)::

    1 the lake's layout marker (_hourglass.json, first start only)
    2-5 part b1, b2, b3, current    6 checkpoint    7 manifest b1    8 checkpoint
    9 manifest b2 ...

The loader is started with ``HOURGLASS_CRASHPOINT``; it kills itself there; we
check it died where intended, keep sending through the gateway, restart it
without the crash point, and check the resting lake: exactly the acknowledged
events, each once (pyarrow and DuckDB), no ``.tmp-*`` file anywhere, every
``_SUCCESS.json`` matching its folder, exact counts in the closed buckets.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hourglass.lake.failed import FAILED_DIR
from hourglass.loader.state import LoaderState
from tests.chaos.conftest import (
    SKIPPED,
    Sender,
    assert_all_manifests_match,
    assert_exactly_once,
    away_from_minute_edge,
    folder_of,
    keys_of_events,
    lake_keys,
    lake_keys_duckdb,
    lake_table,
    manifest_at,
    minute_start,
    publish_events,
    publish_failed,
    tmp_files,
    wait_until,
)
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import NatsServer, post, skipped

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(60)]

FAST = {"bucket": "1m", "marker_interval_s": 0.5, "lease_ttl_s": 3.0, "flush_interval_s": 0.5}
MINUTE = dt.timedelta(minutes=1)


def _state(data: Path, stream: str = SKIPPED) -> LoaderState | None:
    path = data / "loader" / f"{stream}.json"
    return msgspec.json.decode(path.read_bytes(), type=LoaderState) if path.exists() else None


def _parts(lake: Path) -> list[Path]:
    return sorted((lake / SKIPPED).rglob("part-*.parquet"))


def _check_crash_site(point: str, data: Path, buckets: list[dt.datetime]) -> None:
    """What the lake looks like right after the kill proves where it happened."""
    lake = data / "lake"
    b1, b2, b3 = buckets
    state = _state(data)
    parts = _parts(lake)
    closed = [b for b in buckets if manifest_at(folder_of(lake, SKIPPED, b)) is not None]
    tmps = [p.relative_to(data).as_posix() for p in tmp_files(data)]
    where = f"{point}: parts={[p.parent.name for p in parts]} tmp={tmps} closed={closed}"
    if point.startswith("loader.after_part"):
        n = int(point.partition(":")[2] or 1)
        assert len(parts) == n and state is None and not tmps, where
    elif point == "loader.before_checkpoint":
        assert len(parts) == 4 and state is None and not tmps, where
    elif point == "loader.after_checkpoint":
        assert state is not None and state.committed_seq > 0, where
        assert len(parts) == 4 and not closed and not tmps, where
    elif point.startswith("loader.after_manifest"):
        n = int(point.partition(":")[2] or 1)
        assert state is not None and closed == buckets[:n], where
        assert state.next_close == int(buckets[n - 1].timestamp()), where  # not moved on yet
    elif point == "lake.before_rename:3":  # the second part
        assert len(parts) == 1 and state is None, where
        tmp = folder_of(lake, SKIPPED, b2) / f".tmp-{parts[0].name}.partial"  # same seq range
        assert tmps == [tmp.relative_to(data).as_posix()], where
    elif point == "lake.before_rename:6":  # the first checkpoint
        assert len(parts) == 4 and state is None, where
        assert tmps == [f"loader/.tmp-{SKIPPED}.json.partial"], where
    elif point == "lake.before_rename:7":  # the first manifest
        assert state is not None and not closed, where
        assert tmps == [
            (folder_of(lake, SKIPPED, b1) / ".tmp-_SUCCESS.json.partial")
            .relative_to(data)
            .as_posix()
        ], where
    else:  # pragma: no cover - a new point needs its expectation here
        raise AssertionError(f"no expectation for {point}")


POINTS = [
    "loader.after_part",
    "loader.after_part:3",
    "loader.before_checkpoint",
    "loader.after_checkpoint",
    "loader.after_manifest",
    "loader.after_manifest:3",
    "lake.before_rename:3",
    "lake.before_rename:6",
    "lake.before_rename:7",
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_loader_then_restart(
    point: str,
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    settings: dict[str, Any] = {**FAST, "schemas": one_type_schemas}
    data = tmp_path / "data"
    lake = data / "lake"
    away_from_minute_edge(4)
    current = minute_start(time.time())
    b1, b2, b3 = current - 4 * MINUTE, current - 3 * MINUTE, current - 2 * MINUTE
    idle = current - MINUTE

    gw = start_gateway(**settings)
    now_batch = [skipped(source="/gateway") for _ in range(30)]
    assert post(gw.base, now_batch).json() == {"accepted": 30, "rejected": []}
    k1 = [skipped(source="/backlog") for _ in range(20)]
    k2 = [skipped(source="/backlog") for _ in range(20)]
    k3 = [skipped(source="/backlog") for _ in range(10)]
    publish_events(nats_server.url, k1 + [k1[0]], b1 + dt.timedelta(seconds=10))
    publish_events(nats_server.url, k2 + k1[:5], b2 + dt.timedelta(seconds=20))
    publish_events(nats_server.url, k3 + k2[:5], b3 + dt.timedelta(seconds=30))

    crashing = start_loader(env={"HOURGLASS_CRASHPOINT": point}, **settings)
    assert crashing.wait_exit(20) == -signal.SIGKILL, crashing.log_tail()
    _check_crash_site(point, data, [b1, b2, b3])

    sender = Sender(gw.base, make=lambda: skipped(source="/sender"))
    sender.start()
    try:
        sender.wait_for(60)  # acknowledged while no loader runs
        loader = start_loader(**settings)
        sender.wait_for(len(sender.acked) + 200)
    finally:
        acked = sender.finish()
    expected = keys_of_events(now_batch + k1 + k2 + k3) + acked
    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(expected), 20, "every event loaded")
    wait_until(
        lambda: all(manifest_at(folder_of(lake, SKIPPED, b)) for b in (b1, b2, b3, idle)),
        15,
        "the backlog buckets closed",
    )
    loader.stop()
    assert not loader.alive()

    assert tmp_files(data) == []
    assert_exactly_once(lake_keys(lake, SKIPPED), expected, maybe=sender.unanswered)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), expected, maybe=sender.unanswered)
    closed = assert_all_manifests_match(lake)
    got = {
        b: (m.count, m.duplicates_dropped, m.skewed)
        for b in (b1, b2, b3, idle)
        if (m := closed[folder_of(lake, SKIPPED, b)])
    }
    assert got == {b1: (20, 1, 0), b2: (20, 5, 0), b3: (10, 5, 0), idle: (0, 0, 0)}
    assert closed[folder_of(lake, SKIPPED, idle)].files == []


def test_kill_in_failed_stream_checkpoint_leaves_no_tmp(
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    """kill -9 while the failed-events stream (no markers, no buckets to close)
    writes its checkpoint: after the restart its record is in the lake once and no
    temp file is left."""
    settings: dict[str, Any] = {**FAST, "schemas": one_type_schemas}
    data = tmp_path / "data"
    # The gateway's markers open a bucket of the type stream; it must not close
    # during the crashing run, so everything up to the crash happens in its minute
    # (the crashing loader would close it once the minute ended: its checkpoint
    # would be durable write 2, not _failed's).
    away_from_minute_edge(20)
    gw = start_gateway(**settings)  # creates the streams
    gw.stop()  # and no more markers from now on
    first = start_loader(**settings)
    wait_until(lambda: _state(data) is not None, 10, "the type stream's first checkpoint")
    first.stop()
    ids = publish_failed(nats_server.url, "position_ms: expected int")
    # Only _failed has new messages: durable write 1 is its part, 2 its checkpoint.
    crashing = start_loader(env={"HOURGLASS_CRASHPOINT": "lake.before_rename:2"}, **settings)
    assert crashing.wait_exit(20) == -signal.SIGKILL, crashing.log_tail()
    assert [p.name for p in tmp_files(data)] == [f".tmp-{FAILED_DIR}.json.partial"]

    loader = start_loader(**settings)
    wait_until(
        lambda: lake_table(data / "lake", FAILED_DIR, ["id"]).column("id").to_pylist() == ids,
        10,
        "the failed event loaded once",
    )
    wait_until(lambda: _state(data, FAILED_DIR) is not None, 10, "the _failed checkpoint")
    loader.stop()
    assert tmp_files(data) == [], "a temp file survived the restart"
