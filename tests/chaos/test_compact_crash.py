"""kill -9 of the loader right after a compaction's swap, then a restart.

A fake gateway lease (a key in ``hg_gateways`` that never marks) holds every
bucket open while a past minute gets three part files, one per flush; then the
lease goes, the minute closes, and the loader's compactor merges it
(``loader/compact.py``) and kills itself at the crash point.  At that instant a
reader of the type's folder sees every row once; after the restart no staging
folder is left, the bucket is compacted and matches its manifest, every
acknowledged event is in the lake once (pyarrow and DuckDB), and the bucket's
events re-sent are dropped: the restarted loader's dedup reads the merged file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import pytest

from hourglass.bus.marks import LEASE_BUCKET
from hourglass.lake.layout import COMPACTING
from tests.chaos.conftest import (
    FAST,
    SKIPPED,
    assert_all_manifests_match,
    assert_exactly_once,
    folder_of,
    keys_of_events,
    lake_keys,
    lake_keys_duckdb,
    manifest_at,
    minute_start,
    publish_events,
    tmp_files,
    wait_until,
)
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import NatsServer, checkpoint_of, post, skipped

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(90)]


@contextmanager
def a_gateway_that_never_marks(url: str) -> Iterator[None]:
    """A live gateway lease with no marker: no bucket can close while it lasts."""
    stop = threading.Event()

    async def hold() -> None:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream(timeout=5).key_value(LEASE_BUCKET)
            while not stop.is_set():
                await kv.put("gw-test-holds-buckets-open", b"{}")
                await asyncio.sleep(0.5)
            await kv.delete("gw-test-holds-buckets-open")
        finally:
            await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    thread.start()
    time.sleep(1.0)  # the lease is up and the loader's view has it
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


# After the swap only: the loader's restart then meets both leftovers at once (old
# files in a staging folder, merged ones in the bucket).  A kill before the swap is
# tested with a real process in tests/unit/loader/test_compact.py (suite time).
@pytest.mark.parametrize("point", ["compact.swapped"])
def test_kill_loader_around_the_swap_then_restart(
    point: str,
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    settings: dict[str, Any] = {**FAST, "schemas": one_type_schemas}
    lake = tmp_path / "data" / "lake"
    past = minute_start(time.time()) - dt.timedelta(minutes=3)
    folder = folder_of(lake, SKIPPED, past)
    gw = start_gateway(**settings)
    now_batch = [skipped(source="/gateway") for _ in range(30)]
    assert post(gw.base, now_batch).json() == {"accepted": 30, "rejected": []}
    batches = [[skipped(source="/backlog") for _ in range(20)] for _ in range(3)]

    with a_gateway_that_never_marks(nats_server.url):
        crashing = start_loader(env={"HOURGLASS_CRASHPOINT": point}, **settings)
        for i, batch in enumerate(batches):
            publish_events(nats_server.url, batch, past + dt.timedelta(seconds=10 + i))
            wait_until(lambda n=i + 1: len(_parts(folder)) == n, 20, f"part file {i + 1}")
        assert manifest_at(folder) is None
    assert crashing.wait_exit(30) == -signal.SIGKILL, crashing.log_tail()

    backlog = [e for batch in batches for e in batch]
    [staging] = (lake / COMPACTING / SKIPPED).iterdir()
    manifest = manifest_at(folder)
    assert manifest is not None
    if point == "compact.staged":
        assert (manifest.compacted_from, len(_parts(folder)), len(_parts(staging))) == (0, 3, 1)
    else:
        assert (manifest.compacted_from, len(_parts(folder)), len(_parts(staging))) == (3, 1, 3)
    in_lake = [k for k in lake_keys(lake, SKIPPED) if k[0] == "/backlog"]
    assert_exactly_once(in_lake, keys_of_events(backlog))

    loader = start_loader(**settings)
    wait_until(
        lambda: (m := manifest_at(folder)) is not None and m.compacted_from == 3,
        30,
        "the bucket compacted",
    )
    wait_until(lambda: not any((lake / COMPACTING / SKIPPED).iterdir()), 10, "staging dropped")
    # Re-sent in the current minute: a duplicate of rows that live in the merged file.
    seq = checkpoint_of(nats_server.url, SKIPPED).committed_seq
    publish_events(nats_server.url, backlog, minute_start(time.time()) + dt.timedelta(seconds=1))
    wait_until(
        lambda: checkpoint_of(nats_server.url, SKIPPED).committed_seq > seq, 20, "the re-send"
    )
    loader.stop()

    assert tmp_files(tmp_path / "data") == [], "a staged file survived the restart"
    expected = keys_of_events(now_batch + backlog)
    assert_exactly_once(lake_keys(lake, SKIPPED), expected)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), expected)
    closed = assert_all_manifests_match(lake)
    assert len(closed[folder].files) == 1 and closed[folder].count == 60
