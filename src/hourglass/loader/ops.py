"""What the loader tells operators: metrics, and a full lake.

``LoaderMetrics`` is the Prometheus registry of ``hourglass loader``, and
``LakeSpace`` turns a full lake filesystem into one "pausing" and one "resuming"
log line per episode instead of a traceback per retry.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hourglass import log

logger = log.get("hourglass.loader")

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FULL_RETRY_S = 3.0  # while the lake is full, each paused stream retries this often


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, from Python's own I/O or from pyarrow (an OSError with errno)."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


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
        self.open = Gauge(
            "hourglass_loader_buckets_open", "Buckets with pending rows.", ["stream"], registry=r
        )
        self.close_delay = Histogram(
            "hourglass_loader_close_delay_seconds",
            "Bucket close time after its end.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 900),
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
