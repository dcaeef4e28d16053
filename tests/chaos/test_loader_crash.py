"""kill -9 of the loader at every dangerous point, then a restart: the lake is exact.

Each case runs a real nats-server, gateway and loader.  Before the loader starts,
the bus holds one gateway request (current minute) and a backlog published as a
gateway would but stamped in three earlier minutes, with duplicates in the same
message, in a later message and in a later bucket.  So the loader's first flush
writes four parts, then closes four buckets (three with rows, one idle).  Each
file is staged (``.tmp-e1-<name>.staged``), saved in the stream's bus record, then
published (``loader/staging.py``)::

    stage part b1, b2, b3, current  (loader.after_part after each)
    loader.before_checkpoint → save → loader.after_checkpoint → publish
    stage manifest b1 (loader.after_manifest) → save (loader.after_close_checkpoint)
    → publish; then b2 ...

The loader is started with ``HOURGLASS_CRASHPOINT``; it kills itself there; we
check it died where intended, keep sending through the gateway, restart it
without the crash point, and check the resting lake: exactly the acknowledged
events, each once (pyarrow and DuckDB), no staged file anywhere, every
``_SUCCESS.json`` matching its folder, exact counts in the closed buckets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hourglass.bus import jetstream
from hourglass.bus.ownership import read_record
from hourglass.lake.failed import FAILED_DIR
from hourglass.loader.state import LoaderState, Saved
from tests.chaos.conftest import (
    FAST,
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

MINUTE = dt.timedelta(minutes=1)


def _saved(url: str, stream: str = SKIPPED) -> Saved | None:
    """The stream's checkpoint record as saved on the bus (None: never saved)."""

    async def read() -> Saved | None:
        nc = await jetstream.connect(url, name="test")
        try:
            name = (
                jetstream.FAILED_STREAM if stream == FAILED_DIR else jetstream.stream_name(stream)
            )
            record, _ = await read_record(nc.jetstream(timeout=5), name)
        finally:
            await nc.close()
        return msgspec.json.decode(record.body, type=Saved | None) if record else None

    return asyncio.run(read())


def _state(url: str, stream: str = SKIPPED) -> LoaderState | None:
    saved = _saved(url, stream)
    return saved.state if saved else None


def _parts(lake: Path) -> list[Path]:
    return sorted((lake / SKIPPED).rglob("part-*.parquet"))


def _staged(lake: Path) -> list[str]:
    """Staged files, as ``<bucket minute>/<name>``."""
    return [f"{p.parent.name}/{p.name}" for p in tmp_files(lake)]


def _check_crash_site(point: str, url: str, lake: Path, buckets: list[dt.datetime]) -> None:
    """What the lake and the record look like right after the kill prove where it happened."""
    b1, b2, b3 = buckets
    state = _state(url)
    parts = _parts(lake)
    closed = [b for b in buckets if manifest_at(folder_of(lake, SKIPPED, b)) is not None]
    staged = _staged(lake)
    staged_parts = [n for n in staged if n.split("/")[1].startswith(".tmp-e1-part-")]
    staged_manifests = [n for n in staged if n.endswith(".tmp-e1-_SUCCESS.json.staged")]
    where = f"{point}: parts={[p.parent.name for p in parts]} staged={staged} closed={closed}"
    assert len(staged) == len(staged_parts) + len(staged_manifests), where  # nothing else
    if point.startswith("loader.after_part"):
        n = int(point.partition(":")[2] or 1)
        assert not parts and len(staged_parts) == n and state is None, where
    elif point == "loader.before_checkpoint":
        assert not parts and len(staged_parts) == 4 and state is None, where
    elif point == "loader.after_checkpoint":  # committed, not yet visible
        assert state is not None and state.committed_seq > 0, where
        assert not parts and len(staged_parts) == 4 and not closed, where
    elif point.startswith("loader.after_manifest"):  # staged, the close not saved
        n = int(point.partition(":")[2] or 1)
        assert state is not None and closed == buckets[: n - 1], where
        assert len(parts) == 4 and not staged_parts and len(staged_manifests) == 1, where
        assert state.next_close == int(buckets[n - 1].timestamp()), where  # not moved on
    elif point == "loader.after_close_checkpoint":  # saved, not yet visible
        assert state is not None and not closed and len(staged_manifests) == 1, where
        assert state.next_close == int(b2.timestamp()), where
    else:  # pragma: no cover - a new point needs its expectation here
        raise AssertionError(f"no expectation for {point}")


POINTS = [
    "loader.after_part",  # (":3", three parts staged, is the same state: dropped for time)
    "loader.before_checkpoint",
    "loader.after_checkpoint",
    "loader.after_manifest",
    "loader.after_manifest:3",
    "loader.after_close_checkpoint",
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
    _check_crash_site(point, nats_server.url, lake, [b1, b2, b3])

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

    assert tmp_files(data) == [], "a staged file survived the restart"
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


def test_kill_after_the_failed_stream_s_save_publishes_at_restart(
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    """kill -9 right after the failed-events stream (no markers, no buckets to
    close) saved its checkpoint: its part is committed but still staged; after the
    restart its record is in the lake once and no staged file is left."""
    settings: dict[str, Any] = {**FAST, "schemas": one_type_schemas}
    data = tmp_path / "data"
    # The gateway's markers open a bucket of the type stream; it must not close
    # during the crashing run, so everything up to the crash happens in its minute
    # (the crashing loader would close it once the minute ended: its save would
    # be the first, not _failed's).
    away_from_minute_edge(20)
    gw = start_gateway(**settings)  # creates the streams
    gw.stop()  # and no more markers from now on
    first = start_loader(**settings)
    wait_until(lambda: _state(nats_server.url) is not None, 10, "the type stream's first save")
    first.stop()
    ids = publish_failed(nats_server.url, "position_ms: expected int")
    # Only _failed has new messages: the first save of this run is its flush's.
    crashing = start_loader(env={"HOURGLASS_CRASHPOINT": "loader.after_checkpoint"}, **settings)
    assert crashing.wait_exit(20) == -signal.SIGKILL, crashing.log_tail()
    staged = tmp_files(data)
    assert [p.parent.name for p in staged] != [] and all(
        p.name.startswith(".tmp-e2-part-") and FAILED_DIR in p.parts for p in staged
    ), staged
    saved = _state(nats_server.url, FAILED_DIR)
    assert saved is not None and saved.committed_seq >= 1

    loader = start_loader(**settings)
    wait_until(
        lambda: lake_table(data / "lake", FAILED_DIR, ["id"]).column("id").to_pylist() == ids,
        10,
        "the failed event loaded once",
    )
    loader.stop()
    assert tmp_files(data) == [], "a staged file survived the restart"


INDEX_POINTS = ["loader.after_run", "loader.before_checkpoint", "loader.after_checkpoint"]


@pytest.mark.parametrize("point", INDEX_POINTS)
def test_kill_loader_around_a_dedup_run_then_restart(
    point: str,
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    """Runs of 10 keys: the first flush writes its keys as a run, staged with the
    part files (``loader/dedup.py``).  Killed before the save, the run is deleted
    and its keys come again; killed after it, the run is published at restart.
    Either way the restarted loader finds every earlier key in its index: a
    re-send of the whole backlog, much later, adds nothing to the lake."""
    settings: dict[str, Any] = {**FAST, "schemas": one_type_schemas, "dedup_run_keys": 10}
    data = tmp_path / "data"
    lake = data / "lake"
    away_from_minute_edge(4)
    current = minute_start(time.time())
    gw = start_gateway(**settings)
    first = [skipped(source="/gateway") for _ in range(30)]
    assert post(gw.base, first).json() == {"accepted": 30, "rejected": []}
    backlog = [skipped(source="/backlog") for _ in range(40)]
    publish_events(nats_server.url, backlog, current - 3 * MINUTE + dt.timedelta(seconds=5))

    crashing = start_loader(env={"HOURGLASS_CRASHPOINT": point}, **settings)
    assert crashing.wait_exit(20) == -signal.SIGKILL, crashing.log_tail()
    runs = [p.name for p in tmp_files(lake) if p.parent.name == "_dedup"]
    saved = _saved(nats_server.url)
    assert runs and all(n.startswith(".tmp-e1-run-") for n in runs), runs
    if point == "loader.after_checkpoint":
        assert saved is not None and saved.dedup is not None
        assert [r.name for s in saved.dedup.slices for r in s.runs] == [
            n.removeprefix(".tmp-e1-").removesuffix(".staged") for n in runs
        ]
    else:
        assert saved is None

    loader = start_loader(**settings)
    expected = keys_of_events(first + backlog)
    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(expected), 20, "every event loaded")
    wait_until(lambda: (_saved(nats_server.url) or Saved()).dedup is not None, 10, "a run")
    loader.stop()
    assert tmp_files(data) == [], "a staged file survived the restart"
    index = _saved(nats_server.url)
    assert index is not None and index.dedup is not None and index.dedup.keys >= 10
    assert sorted(p.name for p in (lake / SKIPPED / "_dedup").glob("run-*")) == sorted(
        r.name for s in index.dedup.slices for r in s.runs
    ), "the folder holds exactly the runs the checkpoint names"

    # Another restart: now nothing is in memory, every key is in a run or is read
    # back from a part file committed after the last run.
    again = start_loader(**settings)
    publish_events(nats_server.url, backlog + first, current + dt.timedelta(seconds=30))
    more = [skipped(source="/later") for _ in range(5)]
    assert post(gw.base, more).json()["accepted"] == 5
    expected += keys_of_events(more)
    wait_until(lambda: set(lake_keys(lake, SKIPPED)) >= set(expected), 20, "the later events")
    again.stop()
    assert_exactly_once(lake_keys(lake, SKIPPED), expected)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), expected)
