"""One stream's loader: bus messages → dedup → buckets → Parquet → manifests.

Delivery order, and what a crash at each step leaves behind:

1. ``process``: messages after ``processed_seq`` become Arrow rows (markers
   update the pending watermarks), duplicates are dropped, rows are grouped by
   bucket of ``received_at`` in memory.  A crash loses only memory; the messages
   are not acknowledged and come again.
2. ``flush``: for each bucket, ``part-<first>-<last>.parquet`` is staged
   (``staging.py``: written as ``.tmp-e<epoch>-part-….staged``, fsynced, folder
   fsynced).  A crash here leaves staged files no checkpoint names: the next
   recovery deletes them and the messages come again.
3. the checkpoint (``state.py``) is saved with ``committed_seq = last`` and the
   staged names.  From here on the rows are committed; a crash before the next
   step means the next recovery renames the staged files into place, and the
   messages that come again are skipped by sequence number.  A loader that
   lost the stream to another cannot save (``Fenced``) and stops.
4. the staged files are renamed into place (published), folders fsynced.
5. the caller acknowledges the bus messages up to ``last`` (ack-all).
6. ``close_ready``: a bucket whose end every live gateway's *committed*
   watermark has passed gets ``_SUCCESS.json`` the same way (staged, saved
   with ``next_close`` moved on, published).  The rule, and its facts, are in
   ``close.py``.

Recovery never deletes a part file or a manifest: only staged files of its own
epoch or earlier that no checkpoint names (a later owner's are left alone).

Rows for a bucket that is already closed (skew: a late gateway, a lease that
expired) go to the oldest open bucket and are counted as skewed there.

A ``StreamLoader`` loads one stream: an event type's, or ``HG_FAILED`` into
``lake/_failed`` (no dedup, no closing).  A type with P > 1 partitions has a
stream per partition and a loader per stream (``partition``), sharing the type's
bucket folders: each names its part files with its partition, sweeps only its
own files, keeps its dedup index in ``_dedup/p<p>``, and closes a bucket with a
record that the last partition turns into the manifest (``close.py``).  It
reports what it does to an ``Observer`` (Prometheus in the service) besides its
own ``Stats``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np
import pyarrow as pa

from hourglass import log
from hourglass.bus.consumer import BusMessage
from hourglass.crashpoints import crashpoint
from hourglass.lake.arrow import SEQUENCE_COLUMNS
from hourglass.lake.layout import (
    ONLY,
    Partition,
    bucket_key,
    part_name,
)
from hourglass.lake.manifest import Manifest
from hourglass.lake.parquet import write_table
from hourglass.lake.store import LocalStore, Store
from hourglass.loader import close, copies, recovery
from hourglass.loader.dedup import MEMORY_BYTES, Deduper
from hourglass.loader.metrics import Observer, Stats
from hourglass.loader.quarantine import Quarantine
from hourglass.loader.staging import publish, stage, sync_folders
from hourglass.loader.state import (
    BucketCounts,
    Checkpoints,
    DedupState,
    LoaderState,
    Saved,
    copy_state,
)

logger = log.get("hourglass.loader")


class RowFormat(Protocol):
    def to_table(self, ndjson: bytes) -> pa.Table:
        """Rows with at least ``id``, ``source`` and ``received_at`` (µs, UTC), and
        maybe ``SEQUENCE_COLUMNS`` (``lake/arrow.py``), dropped before the lake."""
        ...


class StreamLoader:
    def __init__(
        self,
        name: str,
        fmt: RowFormat,
        *,
        lake: Path,
        checkpoints: Checkpoints,
        quarantine: Path,
        quarantine_max_bytes: int = 0,
        width_s: int,
        window_s: int,
        dedup_memory_bytes: int = MEMORY_BYTES,
        dedup_disk_bytes: int = 1 << 40,
        dedup_run_keys: int | None = None,
        closes: bool = True,
        dedup: bool = True,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        partition: Partition = ONLY,
        store: Store | None = None,
    ) -> None:
        self.name = name
        self.partition = partition
        # A partition's lower bound for its type's first bucket, from the bus
        # (``close.agree_first``); set by the service before the first rows.
        self.first_hint: int | None = None
        self.fmt = fmt
        # ``lake``: the local root, of the dedup index (and of everything when the
        # lake is a folder); ``store``: where the rows go (``lake/store.py``).
        self.lake = lake
        self.store: Store = store or LocalStore(lake)
        self.checkpoints = checkpoints
        self.quarantine = Quarantine(quarantine, quarantine_max_bytes)
        self.width = width_s
        self.closes = closes
        self.clock = clock
        self.state = LoaderState()
        self.processed_seq = 0
        self.observer = observer
        self.stats = Stats(then=observer)
        self.deduper = (
            Deduper(
                lake,
                name,
                window_s=window_s,
                memory_bytes=dedup_memory_bytes,
                disk_bytes=dedup_disk_bytes,
                run_keys=dedup_run_keys,
                partition=partition.index,
                store=self.store,
            )
            if dedup
            else None
        )
        self._pending: dict[int, list[pa.Table]] = {}
        self._pending_markers: dict[str, int] = {}
        self._pending_counts: dict[int, BucketCounts] = {}
        self.last_flush = clock()
        # Worker threads may outlive a cancelled task (asyncio.to_thread): one
        # call at a time, so a stop-time flush never interleaves with process.
        self.lock = threading.Lock()

    def fresh(self, checkpoints: Checkpoints | None = None) -> StreamLoader:
        """A new loader of the same stream, to start again from the checkpoint
        (of ``checkpoints``, for a new claim of the stream): its dedup index is
        the one the checkpoint names, read at ``recover()``."""
        return StreamLoader(
            self.name,
            self.fmt,
            lake=self.lake,
            checkpoints=checkpoints or self.checkpoints,
            quarantine=self.quarantine.folder,
            quarantine_max_bytes=self.quarantine.max_bytes,
            width_s=self.width,
            window_s=self.deduper.window_s if self.deduper else 0,
            dedup_memory_bytes=self.deduper.memory_bytes if self.deduper else MEMORY_BYTES,
            dedup_disk_bytes=self.deduper.disk_bytes if self.deduper else 1 << 40,
            dedup_run_keys=self.deduper.run_keys if self.deduper else None,
            closes=self.closes,
            dedup=self.deduper is not None,
            clock=self.clock,
            observer=self.observer,
            partition=self.partition,
            store=self.store,
        )

    # ---------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Load the checkpoint, publish what it committed, delete what an interrupted
        write left, load the dedup index it names and catch it up (``recovery.py``)."""
        recovery.recover(self)

    def _first_close(self, candidate: int) -> int:
        """Where this stream starts closing: ``candidate``, or for a partition the
        bucket its type's partitions agreed on (``close.agree_first``)."""
        if self.partition.index is None:
            return candidate
        if self.first_hint is not None:
            candidate = min(candidate, self.first_hint)
        return close.agree_first(
            self.store, self.name, self.partition, candidate, self.checkpoints.epoch
        )

    def index_state(self) -> DedupState | None:
        return self.deduper.state if self.deduper is not None else None

    # ------------------------------------------------------------- processing

    def process(self, messages: list[BusMessage]) -> None:
        with self.lock:
            self._process(messages)

    def _process(self, messages: list[BusMessage]) -> None:
        fresh = [m for m in messages if m.seq > self.processed_seq]
        if not fresh:
            return
        payloads: list[bytes] = []
        for message in fresh:
            if message.marker is not None:
                gateway, watermark = message.marker
                self._pending_markers[gateway] = watermark
            elif message.data:
                payloads.append(message.data)
        if payloads:
            table = self._to_table(fresh, payloads)
            if table is not None:
                self._add_rows(table)
        self.processed_seq = fresh[-1].seq

    def _to_table(self, messages: list[BusMessage], payloads: list[bytes]) -> pa.Table | None:
        try:
            return self.fmt.to_table(b"".join(payloads))
        except (pa.ArrowException, msgspec.MsgspecError, ValueError) as exc:
            logger.error(
                "batch not convertible, checking message by message",
                extra={"stream": self.name, "error": str(exc)},
            )
        return self.quarantine.convert_each(
            messages, self.fmt.to_table, self.stats.on_quarantined, self.name
        )

    def _add_rows(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        micros = table.column("received_at").cast(pa.int64()).to_numpy()
        seconds = micros // 1_000_000
        buckets = seconds - seconds % self.width
        late = np.zeros(len(buckets), dtype=bool)
        if self.closes:
            if self.state.next_close is None:  # the very first rows: start closing there
                first = int(min(buckets.min(), self._bucket_of(self.clock())))
                self.state.next_close = self._first_close(first)
            late = buckets < self.state.next_close
            buckets[late] = self.state.next_close
        sequenced = copies.sequenced(table)
        table = table.drop_columns([c for c in SEQUENCE_COLUMNS if c in table.column_names])
        if self.deduper is not None:
            keep = copies.first_copies(self.deduper, table, sequenced, self.clock())
            dropped = ~keep
            if dropped.any():
                for bucket, n in zip(*np.unique(buckets[dropped], return_counts=True), strict=True):
                    self._counts(int(bucket)).duplicates += int(n)
                self.stats.on_duplicates(int(dropped.sum()))
                table = table.filter(pa.array(keep))
                buckets, late = buckets[keep], late[keep]
        if late.any():  # counted after dedup: a late duplicate is only a duplicate
            assert self.state.next_close is not None
            self._counts(self.state.next_close).skewed += int(late.sum())
            self.stats.on_skewed(int(late.sum()))
        for bucket in np.unique(buckets):
            rows = table.filter(pa.array(buckets == bucket))
            self._pending.setdefault(int(bucket), []).append(rows)

    def _bucket_of(self, seconds: float) -> int:
        return int(seconds) - int(seconds) % self.width

    def _counts(self, bucket: int) -> BucketCounts:
        counts = self._pending_counts.get(bucket)
        if counts is None:
            counts = self._pending_counts[bucket] = BucketCounts()
        return counts

    @property
    def unsealed_buckets(self) -> int:
        """A partition's closed buckets still without a manifest (``close.seal``)."""
        first, end = self.state.unsealed, self.state.next_close
        return 0 if first is None or end is None else (end - first) // self.width

    def pending_bytes(self) -> int:
        """Arrow bytes of the rows processed and not yet flushed."""
        return sum(t.nbytes for tables in self._pending.values() for t in tables)

    def open_buckets(self) -> Mapping[int, pa.Table]:
        """Rows processed and not yet flushed, by bucket start (epoch s)."""
        with self.lock:
            return {b: pa.concat_tables(tables) for b, tables in sorted(self._pending.items())}

    # ------------------------------------------------------------------ flush

    def flush(self) -> int:
        """Make everything processed durable; return the sequence to acknowledge."""
        with self.lock:
            return self._flush()

    def _flush(self) -> int:
        """Safe to call again after it failed (say, a full disk): the in-memory
        checkpoint changes only once the new one is saved, and rewriting a part
        file of the same range replaces it."""
        first, last = self.state.committed_seq + 1, self.processed_seq
        self.last_flush = self.clock()
        if last < first:
            return self.state.committed_seq
        if self.closes and self.state.next_close is not None:
            self._move_late_rows(self.state.next_close)
        rows = files = 0
        staged: dict[str, str] = {}
        epoch = self.checkpoints.epoch
        for bucket, tables in sorted(self._pending.items()):
            table = pa.concat_tables(tables)
            start = dt.datetime.fromtimestamp(bucket, dt.UTC)
            name = part_name(first, last, self.partition.index)
            key = f"{bucket_key(self.name, start, self.width)}/{name}"
            staged[key], _ = stage(self.store, key, epoch, partial(write_table, table))
            crashpoint("loader.after_part")
            rows, files = rows + table.num_rows, files + 1
        plan = None
        if self.deduper is not None:
            plan = self.deduper.plan(epoch, last, self.clock())
            staged.update(plan.staged)
        sync_folders(self.store, staged.values())
        state = copy_state(self.state)
        state.committed_seq = last
        state.markers.update(self._pending_markers)
        for bucket, counts in self._pending_counts.items():
            kept = state.buckets.setdefault(bucket, BucketCounts())
            kept.duplicates += counts.duplicates
            kept.skewed += counts.skewed
        crashpoint("loader.before_checkpoint")
        self.checkpoints.save(Saved(state=state, staged=staged, dedup=plan.state if plan else None))
        crashpoint("loader.after_checkpoint")
        publish(self.store, staged)
        if plan is not None and self.deduper is not None:
            self.deduper.apply(plan, self.clock())
            self.stats.on_index(self.deduper.report(self.clock()))
        self.state = state
        self.stats.on_written(files, rows)
        self._pending.clear()
        self._pending_markers.clear()
        self._pending_counts.clear()
        return last

    def _move_late_rows(self, target: int) -> None:
        """Rows for buckets closed since they were processed join the oldest open one."""
        for bucket in [b for b in self._pending if b < target]:
            tables = self._pending.pop(bucket)
            moved = sum(t.num_rows for t in tables)
            self._pending.setdefault(target, []).extend(tables)
            self._counts(target).skewed += moved
            self.stats.on_skewed(moved)
            counts = self._pending_counts.pop(bucket, None)
            if counts is not None:
                self._counts(target).duplicates += counts.duplicates

    # ------------------------------------------------------------------ close

    def close_ready(
        self,
        live: set[str] | None,
        caught_up: bool,
        *,
        live_as_of: float | None = None,
        drained_as_of: float | None = None,
    ) -> list[Manifest]:
        """Close every bucket that is complete (``close.py``); ``live`` is None when
        leases are unknown.

        ``live_as_of`` is when the lease view was read and ``drained_as_of`` when
        the bus was last known to hold nothing more for us (None: just now).  A
        bucket closes only on facts learnt after its end: a loader that was paused
        across the end must not close it on a view from before.
        """
        with self.lock:
            now = self.clock()
            facts = close.Facts(
                live,
                live_as_of if live_as_of is not None else now,
                (drained_as_of if drained_as_of is not None else now) if caught_up else None,
            )
            return self._close_ready(facts, now)

    def _close_ready(self, facts: close.Facts, now: float) -> list[Manifest]:
        if not self.closes:
            return []
        due = partial(
            close.due,
            facts=facts,
            now=now,
            width=self.width,
            has_pending=bool(self._pending),
            all_committed=self.processed_seq == self.state.committed_seq,
        )
        first, starts = due(self.state)
        if self.state.next_close is None and first is not None:
            agreed = self._first_close(first)
            if agreed != first:
                first, starts = due(msgspec.structs.replace(self.state, next_close=agreed))
        self.state.next_close = first
        if facts.live is not None and facts.live_as_of >= now - 60:
            close.prune_markers(self.state, facts.live, now)
        closed = []
        for _ in starts:
            manifest, self.state = close.close_bucket(
                self.store,
                self.name,
                self.width,
                self.state,
                self.checkpoints,
                now,
                self.index_state(),
                self.partition,
            )
            self.stats.on_closed(manifest)
            closed.append(manifest)
        self._seal(now)
        return closed

    def _seal(self, now: float) -> None:
        """A partition: the buckets it closed that have no manifest yet get one
        if every partition has closed them (``close.seal``), in order.
        ``unsealed`` changes in memory and is saved with the next checkpoint:
        sealing again is harmless."""
        state = self.state
        while state.unsealed is not None:
            done = close.seal(
                self.store,
                self.name,
                self.width,
                self.partition,
                state.unsealed,
                self.checkpoints.epoch,
                now,
            )
            if not done:
                break  # a later bucket waits for this one too
            state.unsealed += self.width
            if state.next_close is None or state.unsealed >= state.next_close:
                state.unsealed = None
