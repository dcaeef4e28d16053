"""What the loader tells operators: metrics, and a full lake.

A stream's loader reports what it does to an :class:`Observer`: its own
:class:`Stats` (tallies, for tests and the loader bench), which passes each
report on to a :class:`StreamMetrics` (Prometheus, labelled with the stream) in
``hourglass loader``.  ``LoaderMetrics`` is that process's registry, and
``LakeSpace`` turns a full lake filesystem into one "pausing" and one
"resuming" log line per episode instead of a traceback per retry.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hourglass import log
from hourglass.bus.retention import Retained
from hourglass.lake.manifest import Manifest

logger = log.get("hourglass.loader")

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FULL_RETRY_S = 3.0  # while the lake is full, each paused stream retries this often


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, from Python's own I/O or from pyarrow (an OSError with errno)."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


@dataclass(frozen=True)
class IndexReport:
    """The dedup index of a stream after a flush (``dedup.py``)."""

    window_s: float  # configured
    effective_window_s: float  # what the budgets hold: a re-send this old is still found
    keys: int
    memory_bytes: int
    disk_bytes: int
    disk_budget_bytes: int
    run_lookups: int  # since the last report: keys the filter sent to a run file
    sequenced: int = 0  # since the last report: rows checked by producer sequence
    producers: int = 0  # sessions in the producer sequence table (producers.py)
    producers_evicted: int = 0  # since the last report: sessions or ranges over a bound


class Observer(Protocol):
    """What a stream's loader reports as it goes (``metrics.StreamMetrics`` for Prometheus)."""

    def on_written(self, files: int, rows: int) -> None: ...
    def on_duplicates(self, n: int) -> None: ...
    def on_skewed(self, n: int) -> None: ...
    def on_quarantined(self, n: int, held_bytes: int) -> None: ...
    def on_closed(self, manifest: Manifest) -> None: ...
    def on_index(self, report: IndexReport) -> None: ...


@dataclass
class Stats:
    """The loader's own tallies since it was made; an :class:`Observer` that passes
    everything on to ``then``."""

    rows_written: int = 0
    files_written: int = 0
    duplicates: int = 0
    skewed: int = 0
    quarantined: int = 0
    closed: int = 0
    index: IndexReport | None = None
    then: Observer | None = None

    def on_written(self, files: int, rows: int) -> None:
        self.files_written += files
        self.rows_written += rows
        if self.then is not None:
            self.then.on_written(files, rows)

    def on_duplicates(self, n: int) -> None:
        self.duplicates += n
        if self.then is not None:
            self.then.on_duplicates(n)

    def on_skewed(self, n: int) -> None:
        self.skewed += n
        if self.then is not None:
            self.then.on_skewed(n)

    def on_quarantined(self, n: int, held_bytes: int) -> None:
        self.quarantined += n
        if self.then is not None:
            self.then.on_quarantined(n, held_bytes)

    def on_closed(self, manifest: Manifest) -> None:
        self.closed += 1
        if self.then is not None:
            self.then.on_closed(manifest)

    def on_index(self, report: IndexReport) -> None:
        self.index = report
        if self.then is not None:
            self.then.on_index(report)


class LoaderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lag = Gauge(
            "hourglass_loader_lag_messages",
            "Bus messages not yet delivered.",
            ["stream"],
            registry=r,
        )
        self.files = Counter(
            "hourglass_loader_files_written", "Parquet files written.", ["stream"], registry=r
        )
        self.rows = Counter(
            "hourglass_loader_rows_written", "Rows written.", ["stream"], registry=r
        )
        self.duplicates = Counter(
            "hourglass_loader_duplicates_dropped", "Duplicates dropped.", ["stream"], registry=r
        )
        self.skewed = Counter(
            "hourglass_loader_skewed_events", "Events for closed buckets.", ["stream"], registry=r
        )
        self.closed = Counter(
            "hourglass_loader_buckets_closed", "Buckets closed.", ["stream"], registry=r
        )
        self.quarantined = Counter(
            "hourglass_loader_messages_quarantined",
            "Bus messages that could not be converted, kept in the quarantine folder.",
            ["stream"],
            registry=r,
        )
        self.open = Gauge(
            "hourglass_loader_buckets_open", "Buckets with pending rows.", ["stream"], registry=r
        )
        self.unsealed = Gauge(
            "hourglass_loader_buckets_unsealed",
            "A partition's closed buckets waiting for another partition to close them "
            "before they get their manifest (grows while a partition is down or behind).",
            ["stream"],
            registry=r,
        )
        self.quarantine_bytes = Gauge(
            "hourglass_loader_quarantine_bytes",
            "Bytes in the stream's quarantine folder, at its last write (quarantine_max_bytes).",
            ["stream"],
            registry=r,
        )
        self.owned = Gauge(
            "hourglass_loader_owned",
            "1 while this loader owns the stream, 0 while it is the stream's standby.",
            ["stream"],
            registry=r,
        )
        self.takeovers = Counter(
            "hourglass_loader_takeovers",
            "Streams this loader took over from another (whose lease expired).",
            ["stream"],
            registry=r,
        )
        self.fenced = Counter(
            "hourglass_loader_fenced",
            "Times this loader lost a stream it was loading (lease lost, or fenced at a save).",
            ["stream"],
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "hourglass_loader_checkpoint_bytes",
            "Size of the stream's checkpoint record on the bus (bounded: 1 MiB).",
            ["stream"],
            registry=r,
        )
        self.dedup_window = Gauge(
            "hourglass_loader_dedup_window_seconds",
            "Effective dedup window: a re-send this old is still recognised (below the "
            "configured window once the index's memory or disk budget is full).",
            ["stream"],
            registry=r,
        )
        self.dedup_window_configured = Gauge(
            "hourglass_loader_dedup_window_configured_seconds",
            "The configured dedup window (dedup_window_s).",
            ["stream"],
            registry=r,
        )
        self.dedup_keys = Gauge(
            "hourglass_loader_dedup_keys", "Keys in the dedup index.", ["stream"], registry=r
        )
        self.dedup_memory = Gauge(
            "hourglass_loader_dedup_memory_bytes",
            "Memory of the dedup index: filters and recent keys (half of loader_memory_bytes, "
            "shared by the types).",
            ["stream"],
            registry=r,
        )
        self.dedup_disk = Gauge(
            "hourglass_loader_dedup_disk_bytes",
            "Bytes of the dedup index's run files in <lake>/<type>/_dedup.",
            ["stream"],
            registry=r,
        )
        self.dedup_disk_budget = Gauge(
            "hourglass_loader_dedup_disk_budget_bytes",
            "The stream's share of dedup_disk_bytes.",
            ["stream"],
            registry=r,
        )
        self.pending = Gauge(
            "hourglass_loader_pending_bytes",
            "Arrow bytes of rows processed and not yet flushed (flushed early past a share "
            "of loader_memory_bytes).",
            ["stream"],
            registry=r,
        )
        self.arrow = Gauge(
            "hourglass_loader_arrow_bytes",
            "Bytes allocated from Arrow's memory pool by the whole loader.",
            registry=r,
        )
        self.dedup_run_lookups = Counter(
            "hourglass_loader_dedup_run_lookups",
            "Keys looked up in run files (the filter said maybe: ~0.4 % per slice).",
            ["stream"],
            registry=r,
        )
        self.dedup_sequenced = Counter(
            "hourglass_loader_dedup_sequenced_events",
            "Events deduplicated by producer sequence (Hourglass's SDK and tailer) "
            "instead of by key.",
            ["stream"],
            registry=r,
        )
        self.dedup_producers = Gauge(
            "hourglass_loader_dedup_producers",
            "Producer sessions in the sequence table (bounded: 100,000).",
            ["stream"],
            registry=r,
        )
        self.dedup_producers_evicted = Counter(
            "hourglass_loader_dedup_producers_evicted",
            "Producer sessions or sequence ranges forgotten for a bound before the window "
            "(a re-send of theirs gets through as a duplicate).",
            ["stream"],
            registry=r,
        )
        self.close_delay = Histogram(
            "hourglass_loader_close_delay_seconds",
            "Bucket close time after its end.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.stream_bytes = Gauge(
            "hourglass_stream_bytes", "Bytes stored in the stream.", ["stream"], registry=r
        )
        self.stream_budget = Gauge(
            "hourglass_stream_budget_bytes",
            "The stream's byte limit: unconsumed events plus the replay window.",
            ["stream"],
            registry=r,
        )
        self.stream_unconsumed = Gauge(
            "hourglass_stream_unconsumed_bytes",
            "Bytes of events not yet committed to the lake (estimated from the mean message).",
            ["stream"],
            registry=r,
        )
        self.stream_replay = Gauge(
            "hourglass_stream_replay_bytes",
            "Bytes of committed events kept for replay.",
            ["stream"],
            registry=r,
        )
        self.stream_oldest_age = Gauge(
            "hourglass_stream_oldest_age_seconds",
            "Age of the oldest message kept in the stream: the effective replay window.",
            ["stream"],
            registry=r,
        )
        self.stream_purged = Counter(
            "hourglass_stream_purged_messages",
            "Committed messages removed from the stream (replay window or budget).",
            ["stream"],
            registry=r,
        )
        self.lake_full = Gauge(
            "hourglass_loader_lake_full",
            "1 while the lake filesystem is full and streams are paused.",
            registry=r,
        )
        self.lake_full_retries = Counter(
            "hourglass_loader_lake_full_retries",
            "Writes retried because the lake filesystem was full.",
            ["stream"],
            registry=r,
        )
        self.compacted = Counter(
            "hourglass_loader_buckets_compacted",
            "Closed buckets whose part files were merged (compact.py).",
            ["stream"],
            registry=r,
        )
        self.compacted_files = Counter(
            "hourglass_loader_compacted_files",
            "Part files merged away by compaction (files before minus files after).",
            ["stream"],
            registry=r,
        )
        self.compaction_backlog = Gauge(
            "hourglass_loader_compaction_backlog_buckets",
            "Closed buckets not yet compacted; it grows if compaction cannot keep up.",
            ["stream"],
            registry=r,
        )
        self.compaction_failures = Counter(
            "hourglass_loader_compaction_failures",
            "Compaction rounds that failed (the bucket is tried again; its rows are unharmed).",
            ["stream"],
            registry=r,
        )


class StreamMetrics:
    """One stream's :class:`Observer` on the process's Prometheus counters."""

    def __init__(self, metrics: LoaderMetrics, stream: str) -> None:
        self._m = metrics
        self._stream = stream

    def on_written(self, files: int, rows: int) -> None:
        self._m.files.labels(self._stream).inc(files)
        self._m.rows.labels(self._stream).inc(rows)

    def on_duplicates(self, n: int) -> None:
        self._m.duplicates.labels(self._stream).inc(n)

    def on_skewed(self, n: int) -> None:
        self._m.skewed.labels(self._stream).inc(n)

    def on_quarantined(self, n: int, held_bytes: int) -> None:
        self._m.quarantined.labels(self._stream).inc(n)
        self._m.quarantine_bytes.labels(self._stream).set(held_bytes)

    def on_closed(self, manifest: Manifest) -> None:
        self._m.closed.labels(self._stream).inc()
        self._m.close_delay.observe(max(0.0, manifest.close_delay_s))

    def on_index(self, report: IndexReport) -> None:
        m, s = self._m, self._stream
        m.dedup_window.labels(s).set(report.effective_window_s)
        m.dedup_window_configured.labels(s).set(report.window_s)
        m.dedup_keys.labels(s).set(report.keys)
        m.dedup_memory.labels(s).set(report.memory_bytes)
        m.dedup_disk.labels(s).set(report.disk_bytes)
        m.dedup_disk_budget.labels(s).set(report.disk_budget_bytes)
        m.dedup_run_lookups.labels(s).inc(report.run_lookups)
        m.dedup_sequenced.labels(s).inc(report.sequenced)
        m.dedup_producers.labels(s).set(report.producers)
        m.dedup_producers_evicted.labels(s).inc(report.producers_evicted)


def observe_retention(metrics: LoaderMetrics, stream: str, kept: Retained, committed: int) -> None:
    u = kept.usage
    metrics.stream_bytes.labels(stream).set(u.bytes)
    metrics.stream_budget.labels(stream).set(u.budget)
    metrics.stream_unconsumed.labels(stream).set(u.unconsumed_bytes(committed))
    metrics.stream_replay.labels(stream).set(u.replay_bytes(committed))
    age = 0.0 if kept.oldest_at is None else max(0.0, time.time() - kept.oldest_at)
    metrics.stream_oldest_age.labels(stream).set(age)
    if kept.purged:
        metrics.stream_purged.labels(stream).inc(kept.purged)


class LakeSpace:
    """Streams paused by a full lake filesystem: one log line when it fills, one when
    every stream has written again."""

    def __init__(self, lake: Path, metrics: LoaderMetrics, retry_s: float = FULL_RETRY_S) -> None:
        self.lake = lake
        self.metrics = metrics
        self.retry_s = retry_s
        self.paused: dict[str, str] = {}  # stream -> the write it waits to redo
        self.since: float | None = None  # monotonic start of the current episode

    def free_bytes(self) -> int | None:
        for path in (self.lake, self.lake.parent):
            try:
                return shutil.disk_usage(path).free
            except OSError:
                continue
        return None

    async def wait(self, stream: str, what: str, exc: OSError) -> None:
        """``stream`` could not do write ``what``: note it, sleep until its next try."""
        if self.since is None:
            self.since = time.monotonic()
            self.metrics.lake_full.set(1)
            logger.warning(
                "lake filesystem full, pausing",
                extra={
                    "lake": str(self.lake),
                    "free_bytes": self.free_bytes(),
                    "stream": stream,
                    "write": what,
                    "error": exc.strerror or str(exc),
                    "retry_every_s": self.retry_s,
                },
            )
        else:
            logger.debug("lake still full", extra={"stream": stream, "write": what})
        self.paused[stream] = what
        self.metrics.lake_full_retries.labels(stream).inc()
        await asyncio.sleep(self.retry_s)

    def wrote(self, stream: str, what: str) -> None:
        """``stream`` did write ``what``; if that is the one it paused on, it resumes.

        (Another write succeeding proves little: it may have had nothing to write.)
        """
        if self.paused.get(stream) != what:
            return
        del self.paused[stream]
        if not self.paused and self.since is not None:
            logger.info(
                "lake filesystem has space again, resuming",
                extra={
                    "paused_s": round(time.monotonic() - self.since, 1),
                    "free_bytes": self.free_bytes(),
                },
            )
            self.since = None
            self.metrics.lake_full.set(0)
