"""The dashboard's watcher and its SLO metrics, against a bus and a lake built here.

A real nats-server holds the streams (messages with the gateways' ``Hg-Tally``
headers), the loaders' checkpoints and a gateway's lease, written as those
processes write them; the lake holds manifests and Parquet files as the loader
writes them.  Each bucket is made to be one state: on time, incomplete, late,
skewed, empty, open, overdue; every metric is checked against what was built.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from hourglass.bus import jetstream
from hourglass.bus.marks import Lease, open_leases
from hourglass.bus.ownership import CHECKPOINT_BUCKET, Record
from hourglass.config import Settings, TypeSettings
from hourglass.lake.layout import SUCCESS, bucket_key, part_name
from hourglass.lake.manifest import FileEntry, Manifest
from hourglass.loader.state import DedupState, LoaderState, Saved
from hourglass.monitor.server import Dashboard
from hourglass.monitor.terminal import render
from tests.integration.conftest import base_settings
from tests.integration.support import NatsServer

pytestmark = pytest.mark.integration

A = "music.SongSkipped"  # tier 2: target 600 s
B = "music.AdImpression"  # tier 1: target 1 s, its loader far behind
HOUR = 3600


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    return base_settings(
        nats_server,
        tmp_path,
        bucket="1h",
        types={B: TypeSettings(owner="ads", tier=1)},
        tier_targets_s={1: 1, 2: 600, 3: 21600},
    )


class Built:
    """Writes what the gateways, the loader and the lake would hold."""

    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        self.settings = settings
        self.js = js
        self.lake = settings.lake_path
        self.seq: dict[str, int] = {}

    async def stream(self, type_name: str) -> None:
        await self.js.add_stream(
            StreamConfig(
                name=jetstream.stream_name(type_name),
                subjects=[jetstream.subject(type_name)],
            )
        )

    async def publish(self, type_name: str, minute: int, events: int) -> int:
        ack = await self.js.publish(
            jetstream.subject(type_name),
            b"{}",
            headers={jetstream.KIND: "batch", jetstream.TALLY: f"{minute}:{events}"},
        )
        return int(ack.seq)

    async def checkpoint(self, type_name: str, saved: Saved) -> None:
        try:
            kv = await self.js.key_value(CHECKPOINT_BUCKET)
        except NotFoundError:
            kv = await self.js.create_key_value(KeyValueConfig(bucket=CHECKPOINT_BUCKET))
        record = Record(1, "test", self.settings.lake_url, msgspec.Raw(msgspec.json.encode(saved)))
        await kv.put(jetstream.stream_name(type_name), msgspec.json.encode(record))

    def bucket(
        self,
        type_name: str,
        start: int,
        received: list[int],
        *,
        duplicates: int = 0,
        skewed: int = 0,
        delay: float = 30.0,
    ) -> None:
        """A closed bucket: one part file of ``received`` (epoch s) rows, and its manifest."""
        when = dt.datetime.fromtimestamp(start, dt.UTC)
        folder = self.lake / bucket_key(type_name, when, HOUR)
        folder.mkdir(parents=True)
        name = part_name(1, len(received))
        times = pa.array([t * 1_000_000 for t in received], pa.timestamp("us", tz="UTC"))
        pq.write_table(pa.table({"received_at": times}), folder / name)
        size = (folder / name).stat().st_size
        manifest = Manifest(
            type=type_name,
            bucket_start=when,
            bucket_end=when + dt.timedelta(hours=1),
            closed_at=when + dt.timedelta(hours=1, seconds=delay),
            count=len(received),
            files=[FileEntry(name, len(received), size, _sha256(folder / name))],
            duplicates_dropped=duplicates,
            skewed=skewed,
            close_delay_s=delay,
        )
        (folder / SUCCESS).write_bytes(msgspec.json.encode(manifest))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metrics(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _of(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, t: str) -> float:
    return metrics[(name, (("type", t),))]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def test_every_slo_metric_matches_the_bus_and_lake_it_reads(
    settings: Settings, nats_server: NatsServer, loop: asyncio.AbstractEventLoop
) -> None:
    now = time.time()
    current = int(now) - int(now) % HOUR
    b = [current - (5 - i) * HOUR for i in range(6)]  # b[5] is the current bucket

    async def run() -> None:
        nc = await jetstream.connect(nats_server.url, name="test")
        try:
            js = nc.jetstream(timeout=10)
            built = Built(settings, js)
            for name in (A, B):
                await built.stream(name)
            # Type A: what the gateways published, per bucket (minute 1 of each)...
            published = {b[0]: 10, b[1]: 10, b[2]: 7, b[3]: 4}
            for start, n in published.items():
                committed = await built.publish(A, start // 60 + 1, n)
            # ... and 7 events the loader has not read yet, this minute.
            await built.publish(A, int(now // 60), 3)
            await built.publish(A, int(now // 60), 4)
            # What the loader delivered: b0 whole and on time; b1 missing one
            # (8 rows + 1 duplicate of 10); b2 late (900 s > 600) with 2 of its
            # rows skewed into b3's folder; b3 its own 4 and those 2.
            built.bucket(A, b[0], [b[0] + 5] * 10)
            built.bucket(A, b[1], [b[1] + 5] * 8, duplicates=1)
            built.bucket(A, b[2], [b[2] + 5] * 5, delay=900)
            built.bucket(A, b[3], [b[3] + 5] * 4 + [b[2] + 3500] * 2, skewed=2)
            dedup = DedupState(probe=0, evicted_until=now - 3600)  # the budget kept 1 h of 24
            await built.checkpoint(
                A,
                Saved(state=LoaderState(committed_seq=committed, next_close=current), dedup=dedup),
            )
            # Type B: its loader stuck at b3, two hours ago; nothing published.
            await built.checkpoint(B, Saved(state=LoaderState(committed_seq=0, next_close=b[3])))
            # A gateway's lease, with 100 answers so far.
            leases = await open_leases(js, ttl_s=60, replicas=1)
            lease = Lease("gw-1", int(now * 1e6), 100, [0.001, 0.01, 0.1], [10, 90, 100, 100])
            await leases.put("gw-1", msgspec.json.encode(lease))

            dashboard = Dashboard(settings)
            dashboard.watcher.absent_recheck_s = 0.0
            await dashboard.refresh(js)
            snap = dashboard.watcher.snapshot()
            rows = {r.type: r for r in snap.types}
            a, bb = rows[A], rows[B]
            states = {c.start: c.state for c in a.cells}
            assert [states[s] for s in b] == [
                "ontime",
                "incomplete",
                "late",
                "skewed",
                "empty",
                "open",
            ]
            cells = {c.start: c for c in a.cells}
            assert (cells[b[2]].published, cells[b[2]].delivered) == (7, 7)  # skew counted back
            assert (cells[b[1]].published, cells[b[1]].delivered) == (10, 8)
            assert (a.lag_events, a.overdue, a.owner, bb.owner, bb.tier) == (7, 0, "", "ads", 1)
            assert 0 <= a.lag_s < 60
            assert a.dedup_window_s == pytest.approx(3600, abs=5)
            b_states = {c.start: c.state for c in bb.cells}
            assert [b_states[s] for s in b[3:]] == ["overdue", "overdue", "open"]
            assert bb.overdue == 2
            assert bb.overdue_s == pytest.approx(now - (b[3] + HOUR + 1), abs=5)
            assert snap.minutes[-1].events == 7 and snap.gateways == 1

            m = _metrics(dashboard.metrics_text())
            assert _of(m, "hourglass_slo_last_bucket_completeness_ratio", A) == 1.0  # b3: 4 of 4
            assert _of(m, "hourglass_slo_missing_events", A) == 1
            assert _of(m, "hourglass_slo_incomplete_buckets", A) == 1
            assert _of(m, "hourglass_slo_last_close_delay_seconds", A) == 30
            assert _of(m, "hourglass_slo_last_closed_bucket_end_timestamp_seconds", A) == b[4]
            assert _of(m, "hourglass_slo_last_bucket_skewed_ratio", A) == pytest.approx(2 / 6)
            assert _of(m, "hourglass_slo_lag_events", A) == 7
            assert _of(m, "hourglass_slo_overdue_buckets", B) == 2
            assert _of(m, "hourglass_slo_oldest_open_overdue_seconds", B) > HOUR
            assert _of(m, "hourglass_slo_overdue_buckets", A) == 0
            # Buckets found at start were closed before: not observed again.
            assert _of(m, "hourglass_slo_close_delay_seconds_count", A) == 0
            assert m[("hourglass_slo_gateways_live", ())] == 1
            assert m[("hourglass_slo_refresh_errors_total", ())] == 0

            # b4 closes (late, 1 skewed row) and the gateway answers 50 more.
            await built.publish(A, b[4] // 60 + 1, 3)
            built.bucket(A, b[4], [b[4] + 1] * 3 + [b[3] + 7], skewed=1, delay=700)
            lease = Lease("gw-1", int(now * 1e6), 150, [0.001, 0.01, 0.1], [10, 95, 148, 150])
            await leases.put("gw-1", msgspec.json.encode(lease))
            await dashboard.refresh(js)
            m = _metrics(dashboard.metrics_text())
            assert _of(m, "hourglass_slo_close_delay_seconds_count", A) == 1
            bound = ("hourglass_slo_close_delay_seconds_bucket", (("le", "600.0"), ("type", A)))
            assert m[bound] == 0 and _of(m, "hourglass_slo_close_delay_seconds_sum", A) == 700
            assert _of(m, "hourglass_slo_skewed_events_total", A) == 1
            assert _of(m, "hourglass_slo_last_close_delay_seconds", A) == 700
            # b4's next bucket is open: not settled.  b3 (settled) has one row
            # more than its tally: counted as a mismatch, and the ratio says so.
            assert _of(m, "hourglass_slo_incomplete_buckets", A) == 2
            assert _of(m, "hourglass_slo_last_bucket_completeness_ratio", A) == 5 / 4
            # b3 now holds 5 of its 4 published (one came in b4's folder): flagged.
            snap = dashboard.watcher.snapshot()
            cells = {c.start: c for c in {r.type: r for r in snap.types}[A].cells}
            assert (cells[b[3]].delivered, cells[b[3]].state) == (5, "incomplete")
            assert cells[b[4]].state == "late"
            # The 50 answers of this minute: 5 under 10 ms, 43 under 100 ms, 2 above.
            minute = snap.minutes[-1]
            assert minute.requests == 50
            assert minute.p50_ms is not None and 10 < minute.p50_ms < 100
            assert minute.p99_ms is not None and minute.p99_ms >= 100

            # The bucket's own page: manifest and audit, files checked.
            detail = msgspec.json.decode(dashboard.bucket_json(A, b[1]) or b"")
            assert detail["audit"] == {
                "published": 10,
                "delivered": 8,
                "duplicates": 1,
                "missing": 1,
                "files_match_manifest": True,
                "problems": [],
            }
            assert detail["manifest"]["count"] == 8 and detail["state"] == "incomplete"
            # Compaction swaps the files and the manifest after the watcher read
            # them: the bucket's page shows the lake as it is now.
            folder = settings.lake_path / bucket_key(A, _at(b[1]), HOUR)
            for old in folder.glob("part-*"):
                old.unlink()
            (folder / SUCCESS).unlink()
            folder.rmdir()
            built.bucket(A, b[1], [b[1] + 5] * 8, duplicates=1)
            merged = part_name(1, 8).replace("00001", "00002", 1)
            (folder / part_name(1, 8)).rename(folder / merged)
            manifest = msgspec.json.decode((folder / SUCCESS).read_bytes(), type=Manifest)
            manifest.files[0].name = merged
            manifest.compacted_from = 3
            (folder / SUCCESS).write_bytes(msgspec.json.encode(manifest))
            detail = msgspec.json.decode(dashboard.bucket_json(A, b[1]) or b"")
            assert detail["audit"]["files_match_manifest"] is True, detail["audit"]
            assert detail["manifest"]["compacted_from"] == 3
            part = next((settings.lake_path / bucket_key(A, _at(b[0]), HOUR)).glob("part-*"))
            part.write_bytes(part.read_bytes() + b"x")
            detail = msgspec.json.decode(dashboard.bucket_json(A, b[0]) or b"")
            assert detail["audit"]["files_match_manifest"] is False
            assert any("altered" in p for p in detail["audit"]["problems"])
            assert dashboard.bucket_json("no.such.type", b[0]) is None

            # The terminal's frame: every state readable as a symbol.
            console = Console(record=True, width=140, color_system=None)
            console.print(render(snap, 140))
            text = console.export_text()
            line = next(ln for ln in text.splitlines() if ln.startswith(A))
            assert "✓✗L✗L·" in line, line
            b_line = next(ln for ln in text.splitlines() if ln.startswith(B))
            assert "!!·" in b_line and "ads" in b_line
        finally:
            await nc.close()

    loop.run_until_complete(run())


def _at(start: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(start, dt.UTC)


def test_a_bus_that_does_not_answer_is_counted_and_shown(
    settings: Settings, nats_server: NatsServer, loop: asyncio.AbstractEventLoop
) -> None:
    async def run() -> None:
        nc = await jetstream.connect(nats_server.url, name="test")
        dashboard = Dashboard(settings)
        try:
            await dashboard.refresh(nc.jetstream(timeout=10))
            assert dashboard.error == ""
            nats_server.stop()
            await dashboard.refresh(nc.jetstream(timeout=1))
        finally:
            await nc.close()
        assert dashboard.error
        snap = msgspec.json.decode(dashboard.snapshot_json())
        assert snap["errors"][0] == dashboard.error
        m = _metrics(dashboard.metrics_text())
        assert m[("hourglass_slo_refresh_errors_total", ())] == 1

    loop.run_until_complete(run())


def test_status_watch_redraws_the_grid_until_interrupted(
    settings: Settings, nats_server: NatsServer, loop: asyncio.AbstractEventLoop
) -> None:
    """``hourglass status --watch`` as an operator runs it, piped: a frame per refresh."""
    now = time.time()
    closed = int(now) - int(now) % HOUR - HOUR

    async def build() -> None:
        nc = await jetstream.connect(nats_server.url, name="test")
        try:
            built = Built(settings, nc.jetstream(timeout=10))
            await built.stream(A)
            seq = await built.publish(A, closed // 60, 3)
            built.bucket(A, closed, [closed + 1] * 3)
            await built.checkpoint(
                A, Saved(state=LoaderState(committed_seq=seq, next_close=closed + HOUR))
            )
        finally:
            await nc.close()

    loop.run_until_complete(build())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hourglass",
            "status",
            "--watch",
            "0.3",
            "--bus",
            nats_server.url,
            "--bucket",
            "1h",
            "--data-dir",
            settings.data_dir,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        deadline = time.monotonic() + 30
        out = b""
        assert proc.stdout is not None
        while out.count(b"Hourglass  ") < 2 and time.monotonic() < deadline:
            out += proc.stdout.read1(65536)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
        out += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("Hourglass  ") >= 2, text
    line = next(ln for ln in text.splitlines() if ln.startswith(A))
    assert "✓·" in line, line  # the closed bucket, then the open one
    assert "✓ ontime" in text  # the legend
