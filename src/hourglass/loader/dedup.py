"""Exact deduplication by ``(source, id)`` within a time window, in bounded memory.

A duplicate is an event whose ``(source, id)`` the lake already holds from a
commit within the window, or that the loader holds unflushed, or that came
earlier in the same batch.

Events of Hourglass's own producers (with ``hgproducer``/``hgseq``/``hgacked``)
are deduplicated by sequence instead (``producers.py``): :meth:`fresh_sequenced`,
a table per producer session, saved as ``producers-e<epoch>-<last seq>.hgp`` at
every flush that changed it and named by that flush's checkpoint
(``DedupState.producers``), the previous file deleted after the save.  Their
keys never reach the memtable or the runs; an event is checked by one of the
two, by whether it carries the attributes.

Where the keys are (a key is ``len(source):source:id``, hashed to 64 bits by
DuckDB's vectorised ``hash()``: ``keys.py``):

* the **memtable** (``memtable.py``): keys since the last run, in memory,
  confirmed byte for byte;
* **runs** (``runs.py``): once the memtable holds ``run_keys`` keys, the next
  flush writes them, sorted by hash with their bytes, as one file in
  ``<lake>/<type>/_dedup[/p<partition>]/``, committed with that flush's parts;
* a run is also written once the memtable's first key is a slice span old, so
  keys leave memory, and the window, at any rate; a key is recognised for at
  least the window and at most about two spans more;
* **slices**: runs are grouped by commit time into at most ``slices`` slices of
  ``window / (slices - 1)`` each (a slice also seals when its filter column is
  full); a **filter** (``filter.py``) in memory says for every slice at once
  whether it may hold a key, so only a "maybe" (~0.4 % of keys per slice) looks
  at a run, and a run confirms the bytes before a row is dropped.

The bounds: memory is ``memory_bytes`` (¾ filter, ¼ memtable) whatever the rate;
the runs' bytes stay under ``disk_bytes``.  A slice leaves when it is older than
the window, or earlier when a new slice needs its filter column or the disk
budget needs its bytes: the **effective window** (:meth:`effective_window_s`)
is then shorter than the configured one, which the loader logs and exports.

Crash safety (the invariant: *the index never holds a key the lake does not*,
so it can let a duplicate through, never drop an event):

* memtable keys are of rows processed: a crash loses them with the rows, and
  what is re-read at recovery is only what the lake holds;
* a run is staged, named by the checkpoint of the flush whose part files hold
  its keys (``DedupState.indexed_seq`` moves to that flush's last sequence),
  and published after (``staging.py``): the run and the rows commit together;
* a fenced owner's staged run is never named; the owner that fenced it deletes
  it at its next run (any staged file of an earlier epoch);
* a slice that leaves is left out of the checkpoint first, its files deleted
  after the save; a crash between leaves files no checkpoint names, which the
  next recovery deletes (only those of its own epoch or earlier: a later
  owner's files are not ours to judge);
* recovery reads the runs the checkpoint names, the saved filter columns of
  sealed slices, rebuilds the open slice's column from its runs, and reads the
  keys of part files committed after ``indexed_seq`` back into the memtable:
  no rebuild from the whole window's Parquet, and the same memory as running.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import msgspec
import numpy as np
import pyarrow as pa

from hourglass import log
from hourglass.crashpoints import crashpoint
from hourglass.durable import durable_write
from hourglass.lake.store import LocalStore, Store
from hourglass.loader.filter import SliceFilter
from hourglass.loader.indexfiles import sweep_index
from hourglass.loader.keys import HashFn, first_in_batch, hash64, probe_of
from hourglass.loader.memtable import Memtable
from hourglass.loader.metrics import IndexReport
from hourglass.loader.producers import ProducerTable
from hourglass.loader.runs import Run, RunError, write_run
from hourglass.loader.staging import stage, sweep, write_bytes
from hourglass.loader.state import DedupState, RunRef, SliceState

logger = log.get("hourglass.loader")

MEMORY_BYTES = 256 * 1024 * 1024
SLICES = 16
KEY_BYTES = 128  # memtable cost per key, to size it: table slots, bytes, hashes


@dataclass
class Plan:
    """What one flush changes in the index: made durable by the checkpoint save
    (``state``, ``staged``), applied in memory after it (:meth:`Deduper.apply`)."""

    state: DedupState
    epoch: int
    staged: dict[str, str] = field(default_factory=dict)  # final → staged, from the lake
    run: tuple[str, np.ndarray] | None = None  # the new run's name, its hashes in its order
    new_slice: int | None = None  # a column that starts afresh (its old slice left)
    dropped: list[SliceState] = field(default_factory=list)
    old_producers: str | None = None  # the producer table's file this plan replaces


class Deduper:
    """Dedup index of one event type (see the module docstring)."""

    def __init__(
        self,
        lake: Path,
        stream: str,
        *,
        window_s: int,
        memory_bytes: int = MEMORY_BYTES,
        disk_bytes: int = 1 << 40,
        slices: int = SLICES,
        run_keys: int | None = None,
        hash_fn: HashFn = hash64,
        partition: int | None = None,
        store: Store | None = None,
    ) -> None:
        self.lake = lake
        part = "" if partition is None else f"p{partition}"  # an event's copies share one
        self.folder = lake / stream / "_dedup" / part
        # Keys relative to ``lake``; the runs are memory-mapped from ``folder``, on
        # this machine (a lake on S3 keeps a copy there: ``lake/store.py``).
        self.store: Store = store or LocalStore(lake)
        self.window_s = window_s
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self.hash = hash_fn
        self.probe = probe_of(hash_fn)
        self.filter = SliceFilter(memory_bytes * 3 // 4, slices)
        self.run_keys = run_keys or max(1024, memory_bytes // 4 // KEY_BYTES)
        self.span_s = max(1.0, window_s / max(1, slices - 1))
        self.memtable = Memtable(self.run_keys)
        self.state = DedupState(probe=self.probe)
        self._runs: dict[str, Run] = {}
        self.run_lookups = 0  # keys a run was asked about (the filter said maybe)
        self.producers = ProducerTable(window_s=window_s)
        self._producers_changed = False
        self.sequenced = 0  # rows checked by sequence, since the last report
        self._evicted_reported = 0

    # ------------------------------------------------------------------ probe

    def fresh(self, keys: pa.Array, hashes: np.ndarray | None = None) -> np.ndarray:
        """Mask of rows to keep: first in the batch and held nowhere in the window."""
        if not len(keys):
            return np.zeros(0, dtype=bool)
        if hashes is None:
            hashes = self.hash(keys)
        keep = first_in_batch(keys, hashes)
        todo = np.flatnonzero(keep)
        if self.memtable.count and len(todo):
            held = self.memtable.holds(keys.take(pa.array(todo)), hashes[todo])
            keep[todo[held]] = False
            todo = todo[~held]
        if not self.state.slices or not len(todo):
            return keep
        rows, match = self.filter.candidates(hashes[todo])
        for s in self.state.slices:
            maybe = todo[rows[match[:, s.column]]]
            for ref in s.runs:
                if not len(maybe):
                    break
                self.run_lookups += len(maybe)
                run = self._runs[ref.name]
                held = run.holds(keys.take(pa.array(maybe)), hashes[maybe])
                run.forget_pages()  # a page per lookup: mapped only for this batch
                keep[maybe[held]] = False
                maybe = maybe[~held]
        return keep

    def fresh_sequenced(
        self, producers: pa.Array, seqs: np.ndarray, floors: np.ndarray, now: float
    ) -> np.ndarray:
        """Mask of rows of Hourglass's own producers to keep, remembered at once
        (pending, as :meth:`add`'s keys): ``producers.py``."""
        if not len(seqs):
            return np.zeros(0, dtype=bool)
        self._producers_changed = True
        self.sequenced += len(seqs)
        return self.producers.fresh(producers, seqs, floors, now)

    def add(self, keys: pa.Array, hashes: np.ndarray | None = None, now: float = 0.0) -> None:
        """Remember ``keys`` (rows kept: pending now, committed by the next flush)."""
        self.memtable.add(keys, self.hash(keys) if hashes is None else hashes, now)

    # ------------------------------------------------------------------ flush

    def due(self) -> bool:
        return self.memtable.count >= self.run_keys

    def plan(self, epoch: int, last_seq: int, now: float, *, force: bool = False) -> Plan:
        """The index once the flush that commits everything up to ``last_seq`` is
        saved: a new run if the memtable is full (or ``force``) or its slice's time
        is up, slices that left, a sealed slice's filter column.  Changes nothing
        here; the files it stages are named in ``Plan.staged``."""
        state = msgspec.convert(msgspec.to_builtins(self.state), DedupState)
        plan = Plan(state, epoch)
        self._expire(plan, now)
        current = state.slices[-1] if state.slices and state.slices[-1].bloom is None else None
        time_up = current is not None and now - current.start >= self.span_s
        if current is not None and time_up:
            self._seal(plan, current, epoch)  # the memtable's keys start the next slice
            current = None
        count = self.memtable.count
        since = self.memtable.since
        old = since is not None and now - since >= self.span_s  # keys age out by slices
        if count and (force or time_up or old or count >= self.run_keys):
            if current is None or (current.keys and current.keys + count > self.filter.capacity):
                if current is not None:
                    self._seal(plan, current, epoch)
                current = self._open_slice(plan, now)
            name = f"run-e{epoch}-{state.indexed_seq + 1:020d}-{last_seq:020d}.hgr"
            written: list[np.ndarray] = []
            chunks, hashes = self.memtable.chunks(), self.memtable.hashes()

            def write(file: BinaryIO) -> None:
                written.append(write_run(file, chunks, hashes, self.probe)[1])

            temp, size = stage(self.store, self._rel(self.folder / name), epoch, write)
            crashpoint("loader.after_run")
            current.runs.append(RunRef(name=name, keys=count, nbytes=size))
            current.keys += count
            current.end = now
            plan.run = (name, written[0])
            plan.staged[self._rel(self.folder / name)] = temp
            state.indexed_seq = last_seq
        elif not count:
            state.indexed_seq = last_seq
        if self._producers_changed:
            name = f"producers-e{epoch}-{last_seq:020d}.hgp"
            data = self.producers.encode()
            temp, _ = stage(self.store, self._rel(self.folder / name), epoch, write_bytes(data))
            plan.staged[self._rel(self.folder / name)] = temp
            plan.old_producers, state.producers = state.producers, name
        self._fit_disk(plan)
        return plan

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.lake).as_posix()

    def _expire(self, plan: Plan, now: float) -> None:
        for s in list(plan.state.slices):
            if s.end < now - self.window_s:
                plan.state.slices.remove(s)
                plan.dropped.append(s)

    def _open_slice(self, plan: Plan, now: float) -> SliceState:
        state = plan.state
        free = sorted(set(range(self.filter.slices)) - {s.column for s in state.slices})
        if not free:  # every column in use: the oldest slice gives way (the budget)
            oldest = state.slices.pop(0)
            plan.dropped.append(oldest)
            state.evicted_until = max(state.evicted_until, oldest.end)
            free = [oldest.column]
        s = SliceState(id=state.next_id, column=free[0], start=now, end=now)
        state.next_id += 1
        state.slices.append(s)
        plan.new_slice = s.column
        return s

    def _seal(self, plan: Plan, s: SliceState, epoch: int) -> None:
        """Save the slice's filter column, so a restart loads it instead of
        re-reading the slice's runs.  A slice seals before this plan's run is
        added, so its column in memory is whole."""
        column = self.filter.words[:, s.column].copy()
        name = f"slice-e{epoch}-{s.id:010d}.bloom"
        key = self._rel(self.folder / name)
        temp, _ = stage(self.store, key, epoch, write_bytes(column.tobytes()))
        plan.staged[key] = temp
        s.bloom = name

    def _fit_disk(self, plan: Plan) -> None:
        state = plan.state
        while len(state.slices) > 1 and state.disk_bytes > self.disk_bytes:
            oldest = state.slices.pop(0)
            plan.dropped.append(oldest)
            state.evicted_until = max(state.evicted_until, oldest.end)

    def apply(self, plan: Plan, now: float) -> None:
        """The plan's checkpoint is saved and its files published: take it on."""
        for s in plan.dropped:
            if s.column not in {kept.column for kept in plan.state.slices}:
                self.filter.clear(s.column)
            for ref in s.runs:
                self._runs.pop(ref.name, None)
            for name in [ref.name for ref in s.runs] + ([s.bloom] if s.bloom else []):
                self.store.delete(self._rel(self.folder / name))
        if plan.new_slice is not None:
            self.filter.clear(plan.new_slice)
        if plan.run is not None:
            name, hashes = plan.run
            column = next(s.column for s in plan.state.slices for r in s.runs if r.name == name)
            self.filter.add(column, hashes, in_order=True)
            self._runs[name] = Run(self.folder / name, self.probe)
            self.memtable.clear()
            # An owner fenced after this one's recovery may have staged a run it
            # could never commit: staged files of earlier epochs go, as close.py
            # does in a bucket's folder when it closes.
            sweep(self.store, self._rel(self.folder), plan.epoch - 1, keep=[])
        if plan.old_producers not in (None, plan.state.producers):
            self.store.delete(self._rel(self.folder / plan.old_producers))
        if plan.state.producers != self.state.producers:
            self._producers_changed = False
        was_short = self.effective_window_s(now) < self.window_s
        self.state = plan.state
        if not was_short and self.effective_window_s(now) < self.window_s:
            logger.warning(
                "dedup window shorter than configured: the index budget is full",
                extra={
                    "folder": str(self.folder),
                    "effective_window_s": round(self.effective_window_s(now)),
                    "window_s": self.window_s,
                    "memory_bytes": self.memory_bytes,
                    "disk_bytes": self.disk_bytes,
                },
            )

    # --------------------------------------------------------------- recovery

    def restore(self, state: DedupState | None, epoch: int) -> int:
        """Take on the index a checkpoint names; delete this folder's files no
        checkpoint names (of ``epoch`` or earlier); how many files were deleted.
        A run that cannot be read (or was written with another hash) takes its
        slice out of the window: dedup gets shorter, nothing is dropped."""
        if state is None or state.probe != self.probe:
            if state is not None:
                logger.error(
                    "dedup index written with another key hash: starting a new one",
                    extra={"folder": str(self.folder)},
                )
                state = DedupState(
                    probe=self.probe,
                    indexed_seq=state.indexed_seq,
                    next_id=state.next_id,
                    evicted_until=max((s.end for s in state.slices), default=0.0),
                    producers=state.producers,
                )
            else:
                state = DedupState(probe=self.probe)
        self.memtable.clear()
        self._runs.clear()
        self.filter = SliceFilter(self.filter.nbytes, self.filter.slices)  # untouched pages
        self._restore_producers(state)
        kept: list[SliceState] = []
        for s in state.slices:
            try:
                runs = {ref.name: Run(self._local(ref.name), self.probe) for ref in s.runs}
                if s.bloom is not None:
                    self.filter.load_column(s.column, self._local(s.bloom).read_bytes())
                else:
                    for run in runs.values():
                        self.filter.add(s.column, np.asarray(run.hashes), in_order=True)
                        run.forget_pages()
            except (OSError, RunError, ValueError) as exc:
                logger.error(
                    "dedup slice unreadable, left out of the window",
                    extra={"folder": str(self.folder), "slice": s.id, "error": str(exc)},
                )
                self.filter.clear(s.column)
                state.evicted_until = max(state.evicted_until, s.end)
                continue
            self._runs.update(runs)
            kept.append(s)
        state.slices = kept
        self.state = state
        return self._sweep(epoch)

    def _restore_producers(self, state: DedupState) -> None:
        self.producers = ProducerTable(window_s=self.window_s)
        self._producers_changed = False
        self._evicted_reported = 0
        if state.producers is None:
            return
        try:
            self.producers.load(self._local(state.producers).read_bytes())
        except (OSError, ValueError) as exc:
            # Re-sends of those producers get through as duplicates until their
            # floors are learnt again; nothing is dropped.
            logger.error(
                "producer sequence table unreadable, starting an empty one",
                extra={"folder": str(self.folder), "file": state.producers, "error": str(exc)},
            )
            self.producers = ProducerTable(window_s=self.window_s)
            state.producers = None

    def _local(self, name: str) -> Path:
        """A file of the index on this machine, copied from the store if only it
        has one (a loader taking a stream of an S3 lake over on another machine)."""
        path = self.folder / name
        if not path.exists():
            with self.store.open(self._rel(path)) as source:
                durable_write(path, partial(_copy, source))
        return path

    def _sweep(self, epoch: int) -> int:
        return sweep_index(self.store, self._rel(self.folder), self.state, epoch)

    # ------------------------------------------------------------- reporting

    def effective_window_s(self, now: float) -> float:
        return self.state.effective_window_s(self.window_s, now)

    def report(self, now: float) -> IndexReport:
        """How the index stands, for metrics; counts since the last report."""
        lookups, self.run_lookups = self.run_lookups, 0
        sequenced, self.sequenced = self.sequenced, 0
        evicted = self.producers.evicted - self._evicted_reported
        self._evicted_reported = self.producers.evicted
        return IndexReport(
            window_s=float(self.window_s),
            effective_window_s=self.effective_window_s(now),
            keys=self.keys,
            memory_bytes=self.nbytes,
            disk_bytes=self.disk_used,
            disk_budget_bytes=self.disk_bytes,
            run_lookups=lookups,
            sequenced=sequenced,
            producers=len(self.producers),
            producers_evicted=evicted,
        )

    @property
    def disk_used(self) -> int:
        return self.state.disk_bytes

    @property
    def nbytes(self) -> int:
        return self.filter.nbytes + self.memtable.nbytes

    @property
    def keys(self) -> int:
        return self.state.keys + self.memtable.count


def _copy(source: BinaryIO, path: Path) -> None:
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out)
