"""The loader's unflushed rows stay within their share of ``loader_memory_bytes``
(``loader/resources.py``): a backlog several shares big is written in several early
flushes, long before ``flush_interval_s``, against a real nats-server."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import httpx
import pytest

from hourglass.bus.embedded import free_port
from hourglass.bus.jetstream import subject
from hourglass.config import MiB
from hourglass.loader.resources import limit_malloc_arenas, pending_share
from hourglass.schemas import DEMO_SCHEMAS_DIR
from tests.chaos.conftest import (
    SKIPPED,
    assert_exactly_once,
    bus_lines,
    keys_of_events,
    lake_keys,
    publish_raw,
    wait_until,
)
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import NatsServer, metric_total, skipped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MEMORY = 64 * MiB  # the smallest budget: an 8 MiB share of unflushed rows for one type
# ~30 MiB of NDJSON: more than one gathered batch (16 MiB), each more than a share.
MESSAGES, PER_MESSAGE = 60, 5_000


def test_arenas_are_capped_on_glibc() -> None:
    assert limit_malloc_arenas() is True  # this machine's C library is glibc


def test_a_backlog_bigger_than_the_share_is_flushed_early_in_parts(
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    tmp_path: Path,
) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    shutil.copy(DEMO_SCHEMAS_DIR / "SongSkipped.avsc", schemas / "SongSkipped.avsc")
    settings = {
        "schemas": str(schemas),
        "bucket": "1m",
        "flush_interval_s": 90.0,  # the test ends long before a timed flush
        "loader_memory_bytes": MEMORY,
    }
    start_gateway(**settings).stop()  # creates the streams
    events = [skipped(source="/backlog") for _ in range(MESSAGES * PER_MESSAGE)]
    now = dt.datetime.now(dt.UTC)
    payloads = [
        bus_lines(events[i : i + PER_MESSAGE], now)[SKIPPED]
        for i in range(0, len(events), PER_MESSAGE)
    ]
    publish_raw(nats_server.url, [(subject(SKIPPED), p) for p in payloads])

    port = free_port()
    loader = start_loader(loader_metrics_port=port, **settings)

    def metric(name: str) -> float:  # the failed-events stream adds nothing here
        return metric_total(port, name)

    # Files written by flushes (a close's compaction may merge them later).
    wait_until(lambda: metric("hourglass_loader_files_written_total") >= 2, 30, "early flushes")
    assert metric("hourglass_loader_rows_written_total") >= len(events) // 2
    assert 0 <= metric("hourglass_loader_pending_bytes") <= 4 * pending_share(MEMORY, 1)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert any(line.startswith("hourglass_loader_arrow_bytes ") for line in text.splitlines())

    started = time.monotonic()
    loader.stop()  # a clean stop flushes the rest
    assert time.monotonic() - started < 30
    assert_exactly_once(lake_keys(loader.lake, SKIPPED), keys_of_events(events))
