"""Compaction: a closed bucket's part files merged into few, swapped in whole.

An open bucket gets a part file per flush (one every ``flush_interval_s``:
1,800 an hour), which readers pay for in opens and footers.  Once a bucket is
closed its rows never change, so the loader merges its files in the background,
off the hot path, one bucket at a time:

1. **build**: the bucket folder's part files, in sequence order, are read and
   written again as files of about ``compact_target_bytes`` (a schema change
   starts a new one), with a manifest listing them, into a staging folder
   ``<lake>/_compacting/<type>/e<epoch>-<bucket>`` outside the type's tree (a
   reader's glob of ``<lake>/<type>/**`` never sees it); each file is fsynced,
   then the folder and its parent.
2. **swap**: under the type's lock file, if the bucket's manifest is still the
   uncompacted one and every staged file is there at its size, the bucket folder
   and the staging folder are exchanged in one atomic step (``renameat2`` with
   ``RENAME_EXCHANGE``, :func:`hourglass.durable.exchange`); both parents are
   fsynced.  A reader that lists the folder sees the old files or the new, never
   both and never neither; one that listed the old files and opens one after the
   swap gets "file not found" and lists again.
3. **drop**: the staging folder, which now holds the old part files, is deleted.

A merged file is named ``part-<first>-<last>`` after the whole range it covers
(``part-p<p>-…``: a partitioned type's files merge within their partition, whose
sequences they carry), and keeps the modification time of the newest file it
merged.  Of a partitioned type, the loader of partition 0 compacts, once a
bucket has its manifest (every partition closed it).  A reader that
follows the lake incrementally by file name would see merged files as new:
such a reader follows closed buckets by their manifests instead.

Why a crash anywhere is safe: **a staging folder never holds the only copy of a
row**.  Before the swap the bucket folder holds the original files; after it,
the merged ones.  So any staging folder may be deleted at any time, and recovery
is exactly that (:func:`drop_staging`): a crash before the swap costs the merge,
which runs again; one after it leaves the old files to delete.  No checkpoint is
needed for correctness; the stream's checkpoint keeps ``compacted_before`` only
so the next round starts where the last one got to.

Two compactors of one bucket (an owner and a fenced one woken from a pause)
produce the same rows, since a closed bucket's rows are fixed.  The lock makes
"check, then swap" one step, so the second finds the bucket compacted and drops
its own work instead of swapping the old files back; cleaning up takes the lock
too, so nothing deletes a staging folder while its owner validates or swaps it.
The lock is ``flock`` on a file in ``_compacting``: it holds for loaders on one
host (a lake on a local file system).  Where the swap is not available (not
Linux, a file system without it) compaction is off and says so once.

Memory: one row group of input (``ROW_GROUP_ROWS`` rows or ``BUFFER_BYTES``)
at a time; disk: one bucket's size, until the drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from hourglass import log
from hourglass.crashpoints import crashpoint
from hourglass.durable import (
    ExchangeUnsupported,
    exchange,
    fsync_dir,
    fsync_file,
    makedirs_durable,
)
from hourglass.lake.layout import (
    COMPACTING,
    SUCCESS,
    bucket_dir,
    bucket_dirs,
    bucket_of_dir,
    part_name,
    part_partition,
    part_range,
)
from hourglass.lake.manifest import Manifest, files_of, manifest_bytes, read_manifest
from hourglass.lake.parquet import ROW_GROUP_ROWS, writer_options
from hourglass.lake.store import LocalStore
from hourglass.loader.metrics import LoaderMetrics

if TYPE_CHECKING:
    from hourglass.loader.stream import StreamLoader

logger = log.get("hourglass.loader")

BUFFER_BYTES = 64 << 20  # input held before it is written as a row group
EVERY_S = 5.0  # a stream looks for closed buckets to compact this often
RETRY_S = 60.0  # after a failed round
NICE = 5  # the compaction thread yields the CPU to the loader's own work
_STAGING = re.compile(r"^e(\d+)-")


class Stopped(Exception):
    """The loader is stopping: the merge in progress is abandoned (and dropped)."""


@dataclass(frozen=True)
class Compacted:
    folder: Path
    files_before: int
    files_after: int
    rows: int
    seconds: float


def staging_root(lake: Path, name: str) -> Path:
    return lake / COMPACTING / name


def staging_dir(lake: Path, name: str, folder: Path, epoch: int) -> Path:
    flat = folder.relative_to(lake / name).as_posix().replace("/", ",")
    return staging_root(lake, name) / f"e{epoch}-{flat}"


@contextmanager
def locked(lake: Path, name: str) -> Iterator[None]:
    """The type's compaction lock: check-and-swap, and cleaning up, hold it."""
    root = staging_root(lake, name)
    makedirs_durable(root)
    with open(root.parent / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def drop_staging(lake: Path, name: str, epoch: int) -> int:
    """Delete the staging folders of epochs up to ``epoch`` (any of them may go:
    none holds the only copy of a row); how many.  A later epoch's are a newer
    owner's work in progress, left to it."""
    root = staging_root(lake, name)
    if not root.exists():
        return 0
    dropped = 0
    with locked(lake, name):
        for path in root.iterdir():
            match = _STAGING.match(path.name)
            if match and int(match.group(1)) <= epoch:
                shutil.rmtree(path, ignore_errors=True)
                dropped += 1
        if dropped:
            fsync_dir(root)
    return dropped


def compacts(loader: StreamLoader) -> bool:
    """Whether this stream's loader compacts its type's closed buckets: of a
    partitioned type, only partition 0's does (one merge per bucket, not P).  A
    lake on S3 is not compacted (yet): the swap is a rename of a folder, which
    object stores do not have; its part files stay one per flush."""
    return loader.partition.index in (None, 0) and loader.store.local is not None


def groups_of(paths: list[Path], target_bytes: int) -> list[list[Path]]:
    """Consecutive files merged into one: up to ``target_bytes`` of input each (a
    larger file stays alone), one schema and one partition per group."""
    groups: list[list[Path]] = []
    size = 0
    schema: pa.Schema | None = None
    for path in paths:
        this = pq.read_schema(path)
        n = path.stat().st_size
        if (
            groups
            and size + n <= target_bytes
            and schema is not None
            and this.equals(schema)
            and part_partition(path.name) == part_partition(groups[-1][0].name)
        ):
            groups[-1].append(path)
            size += n
        else:
            groups.append([path])
            size, schema = n, this
    return groups


def pending(lake: Path, name: str, width: int, since: int | None, until: int) -> Iterator[int]:
    """Starts of the closed buckets from ``since`` (None: the oldest folder) up to
    ``until`` (the stream's ``next_close``) that have a folder."""
    if since is None:
        first = next(iter(bucket_dirs(lake, name)), None)
        if first is None:
            return
        since = int(bucket_of_dir(lake, name, first).timestamp())
    for start in range(since, until, width):
        if bucket_dir(lake, name, dt.datetime.fromtimestamp(start, dt.UTC), width).exists():
            yield start


def compact_bucket(
    lake: Path,
    name: str,
    folder: Path,
    epoch: int,
    target_bytes: int,
    stop: threading.Event | None = None,
) -> Compacted | None:
    """Merge one closed bucket's part files (steps 1–3 above); None if there is
    nothing to do (not closed, compacted already, nothing to merge), or another
    compactor got there first."""
    started = time.monotonic()
    manifest = read_manifest(folder)
    if manifest is None or manifest.compacted_from:
        return None
    parts = sorted(p for p in folder.iterdir() if part_range(p.name) is not None)
    if sorted(p.name for p in parts) != sorted(f.name for f in manifest.files):
        logger.warning(
            "bucket folder differs from its manifest; not compacted (hourglass audit names "
            "the difference)",
            extra={"type": name, "bucket": str(folder)},
        )
        return None
    groups = groups_of(parts, target_bytes)
    if len(groups) == len(parts):
        return None
    staging = staging_dir(lake, name, folder, epoch)
    shutil.rmtree(staging, ignore_errors=True)
    makedirs_durable(staging)
    try:
        for group in groups:
            _merge(group, staging, stop)
        files = files_of(LocalStore(staging), "")  # rows from each footer, as the close does
        if sum(f.rows for f in files) != manifest.count:
            logger.error(
                "merged files do not hold the bucket's rows; not swapped in",
                extra={
                    "type": name,
                    "bucket": str(folder),
                    "rows": sum(f.rows for f in files),
                    "count": manifest.count,
                },
            )
            return None
        merged = msgspec.structs.replace(
            manifest,
            files=files,
            compacted_from=len(parts),
            compacted_at=dt.datetime.now(dt.UTC),
        )
        data = manifest_bytes(merged)
        (staging / SUCCESS).write_bytes(data)
        fsync_file(staging / SUCCESS)
        fsync_dir(staging)
        fsync_dir(staging.parent)
        crashpoint("compact.staged")
        with locked(lake, name):
            if not _swappable(folder, staging, merged, data):
                return None
            exchange(staging, folder)
            fsync_dir(folder.parent)
            fsync_dir(staging.parent)
            crashpoint("compact.swapped")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.monotonic() - started
    logger.info(
        "bucket compacted",
        extra={
            "type": name,
            "bucket": manifest.bucket_start.isoformat(),
            "files_before": len(parts),
            "files_after": len(files),
            "rows": merged.count,
            "seconds": round(seconds, 2),
        },
    )
    return Compacted(folder, len(parts), len(files), merged.count, seconds)


def _swappable(folder: Path, staging: Path, merged: Manifest, data: bytes) -> bool:
    """Under the lock: the bucket is still uncompacted with these rows, and the
    staging folder is whole (no one cleaned it up under this compactor)."""
    current = read_manifest(folder)
    if current is None or current.compacted_from or current.count != merged.count:
        return False
    try:
        if (staging / SUCCESS).read_bytes() != data:
            return False
        return all((staging / f.name).stat().st_size == f.bytes for f in merged.files)
    except FileNotFoundError:
        return False


def _merge(group: list[Path], staging: Path, stop: threading.Event | None) -> None:
    """One merged file of ``group`` in ``staging``, named by the range it covers."""
    spans = [part_range(p.name) for p in group]
    first = min(s[0] for s in spans if s is not None)
    last = max(s[1] for s in spans if s is not None)
    path = staging / part_name(first, last, part_partition(group[0].name))
    schema = pq.read_schema(group[0])
    with pq.ParquetWriter(path, schema, **writer_options(schema)) as writer:
        held: list[pa.Table] = []
        held_rows = held_bytes = 0
        for part in group:
            if stop is not None and stop.is_set():
                raise Stopped
            table = pq.read_table(part, use_threads=False)
            held.append(table)
            held_rows += table.num_rows
            held_bytes += table.nbytes
            if held_rows >= ROW_GROUP_ROWS or held_bytes >= BUFFER_BYTES:
                writer.write_table(pa.concat_tables(held), row_group_size=ROW_GROUP_ROWS)
                held, held_rows, held_bytes = [], 0, 0
        if held:
            writer.write_table(pa.concat_tables(held), row_group_size=ROW_GROUP_ROWS)
    # The merged file keeps the time its newest row reached the lake: its rows were
    # readable since then (what "send → lake" latency measures), not since the merge.
    newest = max(p.stat().st_mtime_ns for p in group)
    os.utime(path, ns=(newest, newest))
    fsync_file(path)


def compact_closed(
    loader: StreamLoader,
    target_bytes: int,
    stop: threading.Event,
    done: Callable[[Compacted], None],
) -> int:
    """One round for a stream: its closed buckets from ``compacted_before`` on, in
    order, each merged if it needs it; how many closed buckets are left to look at
    (0 unless ``stop`` cut the round short).  Runs in a worker thread: the stream's
    lock is held only to read where to start and to move that on."""
    with loader.lock:
        until = loader.state.next_close
        since = loader.state.compacted_before
        epoch = loader.checkpoints.epoch
    if not loader.closes or until is None or not compacts(loader):
        return 0
    for start in pending(loader.lake, loader.name, loader.width, since, until):
        if stop.is_set():
            return (until - start) // loader.width
        begin = dt.datetime.fromtimestamp(start, dt.UTC)
        folder = bucket_dir(loader.lake, loader.name, begin, loader.width)
        if loader.partition.index is not None and not (folder / SUCCESS).exists():
            return (until - start) // loader.width  # another partition has not closed it
        result = compact_bucket(loader.lake, loader.name, folder, epoch, target_bytes, stop)
        if result is not None:
            done(result)
        with loader.lock:
            loader.state.compacted_before = start + loader.width
    with loader.lock:
        loader.state.compacted_before = max(loader.state.compacted_before or until, until)
    return 0


class Compactor:
    """The loader's compaction: one merge at a time for all its streams, in a
    thread of its own at a lower priority, each stream asking every ``EVERY_S``.
    A failure harms no row (see above): the bucket is tried again next round."""

    def __init__(self, target_bytes: int, metrics: LoaderMetrics) -> None:
        self.target_bytes = target_bytes
        self.metrics = metrics
        self.off = not target_bytes
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix="hourglass-compact", initializer=_nice
        )

    async def run(
        self, name: str, current: Callable[[], StreamLoader], stop: threading.Event
    ) -> None:
        """Compact stream ``name`` (its loader as ``current()`` returns it) until
        cancelled or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        backlog = self.metrics.compaction_backlog.labels(name)
        while not self.off:
            await asyncio.sleep(EVERY_S)
            loader = current()
            if not loader.closes:
                return
            work = partial(
                compact_closed, loader, self.target_bytes, stop, partial(self._done, name)
            )
            try:
                backlog.set(await loop.run_in_executor(self._pool, work))
            except Stopped:
                return
            except ExchangeUnsupported as exc:
                self.off = True
                logger.warning(
                    "compaction is off: the lake's file system cannot swap folders "
                    "atomically (closed buckets keep one part file per flush)",
                    extra={"stream": name, "error": str(exc)},
                )
            except Exception as exc:
                self.metrics.compaction_failures.labels(name).inc()
                logger.warning(
                    "compaction failed; trying again later",
                    extra={"stream": name, "error": repr(exc), "retry_s": RETRY_S},
                )
                await asyncio.sleep(RETRY_S)  # a full disk, say: one line a minute, not 12

    def _done(self, name: str, result: Compacted) -> None:
        self.metrics.compacted.labels(name).inc()
        self.metrics.compacted_files.labels(name).inc(result.files_before - result.files_after)


def _nice() -> None:
    """Lower this thread's priority (Linux: ``setpriority`` of a thread id)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
