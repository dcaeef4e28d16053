"""The loader's checkpoint for one stream, and where it is kept.

The service keeps it in the bus (``hg_checkpoints``, one fenced record per
stream: ``bus/ownership.py``, ``loader/owner.py``); :class:`FileCheckpoints`
keeps it in a local file, for unit tests and the loader benchmark, and is the
format the loader kept in ``<data-dir>/loader/<stream>.json`` before, which the
service imports once (:func:`legacy_saved`).

Invariants (the order of one flush is in ``stream.StreamLoader.flush``):

* ``committed_seq``: every event of stream messages ``<= committed_seq`` is in a
  Parquet file of the lake, or staged under a name in ``staged`` (or was
  dropped as a duplicate, or was a marker).
* ``staged``: the files the last commit made durable under a staged name
  (``.tmp-e<epoch>-<name>.staged``), by their final path in the lake.  Whoever loads
  the stream next renames those still staged into place before anything else
  (rolls them forward); every other staged file is uncommitted and is deleted.
* ``next_close``: every bucket that starts before it has its ``_SUCCESS.json``,
  or has it in ``staged``.
* ``markers``: each gateway's latest watermark (µs) among messages
  ``<= committed_seq``; ``buckets``: duplicate and skew counts of open buckets,
  for their manifests.

A checkpoint is saved after the flush's staged files are durable and before
the bus messages are acknowledged: a crash before the save leaves the previous
checkpoint, and the messages after it are redelivered and processed again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import msgspec

from hourglass.durable import durable_write_bytes


class BucketCounts(msgspec.Struct):
    duplicates: int = 0
    skewed: int = 0


class LoaderState(msgspec.Struct, kw_only=True):
    committed_seq: int = 0
    next_close: int | None = None  # epoch seconds of the oldest open bucket
    markers: dict[str, int] = {}
    buckets: dict[int, BucketCounts] = {}
    # Closed buckets before it are compacted or had nothing to merge (compact.py);
    # None: not looked at yet.  Only where the next round starts: losing a step
    # of it costs a look at a manifest.
    compacted_before: int | None = None
    # A partition of a partitioned type: the first bucket it closed whose
    # manifest it has not seen yet (``close.py``, :func:`~hourglass.loader.close.
    # seal`); every bucket from it to ``next_close`` waits too.  One number
    # whatever the wait: buckets close and seal in order.
    unsealed: int | None = None


class RunRef(msgspec.Struct):
    """A dedup run file (``runs.py``) in ``<lake>/<type>/_dedup/``."""

    name: str
    keys: int
    nbytes: int


class SliceState(msgspec.Struct, kw_only=True):
    """The runs of one time slice of the dedup window, and its filter column."""

    id: int
    column: int  # of the in-memory filter (filter.py)
    start: float  # epoch s of its first commit
    end: float  # epoch s of its last commit
    keys: int = 0
    runs: list[RunRef] = []
    bloom: str | None = None  # the saved filter column, once sealed (takes no more runs)


class DedupState(msgspec.Struct, kw_only=True):
    """The persisted dedup index of a stream (``dedup.py``): every key of every
    commit up to ``indexed_seq`` is in a run of ``slices`` (or was in a slice
    that left the window); keys of later commits are read back from their part
    files at recovery."""

    probe: int  # hash64 of a fixed key when written: another hash function is refused
    indexed_seq: int = 0
    next_id: int = 1
    slices: list[SliceState] = []
    # Keys committed before this (epoch s) were dropped for the budget, not age.
    evicted_until: float = 0.0
    # The producer sequence table's file (producers.py) in _dedup/, as of this commit.
    producers: str | None = None

    def effective_window_s(self, window_s: float, now: float) -> float:
        """How far back a re-send is recognised for sure: the window, or less once
        the budget pushed slices out before their time."""
        if self.evicted_until > now - window_s:
            return max(0.0, now - self.evicted_until)
        return float(window_s)

    @property
    def keys(self) -> int:
        return sum(s.keys for s in self.slices)

    @property
    def disk_bytes(self) -> int:
        return sum(r.nbytes for s in self.slices for r in s.runs)


class Saved(msgspec.Struct, kw_only=True):
    """What a checkpoint store holds: the state, and the files its commit staged."""

    state: LoaderState = msgspec.field(default_factory=LoaderState)
    staged: dict[str, str] = {}  # final path → staged path, both relative to the lake
    dedup: DedupState | None = None  # None: no index yet (a new stream, or an upgrade)
    # Imported from a local file of an earlier version: the first recovery also
    # deletes part files above committed_seq (that version renamed before it saved).
    legacy: bool = False


class Checkpoints(Protocol):
    """Where one stream's checkpoint lives; ``epoch`` stamps the files it stages."""

    epoch: int

    def load(self) -> Saved: ...

    def save(self, saved: Saved) -> None:
        """Make ``saved`` durable, or raise (:class:`~hourglass.exceptions.Fenced`:
        another loader owns the stream now)."""
        ...


class FileCheckpoints:
    """A checkpoint in a local file (temp, fsync, rename, fsync folder): unfenced,
    for one loader alone (unit tests, ``bench/loader.py``)."""

    epoch = 0

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Saved:
        if not self.path.exists():
            return Saved()
        return msgspec.json.decode(self.path.read_bytes(), type=Saved)

    def save(self, saved: Saved) -> None:
        durable_write_bytes(self.path, msgspec.json.encode(saved))


def legacy_saved(path: Path) -> Saved | None:
    """The checkpoint an earlier version kept in ``path`` (a bare ``LoaderState``)."""
    if not path.exists():
        return None
    return Saved(state=load_state(path), legacy=True)


def load_state(path: Path) -> LoaderState:
    if not path.exists():
        return LoaderState()
    return msgspec.json.decode(path.read_bytes(), type=LoaderState)


def save_state(path: Path, state: LoaderState) -> None:
    durable_write_bytes(path, msgspec.json.encode(state))


def copy_state(state: LoaderState) -> LoaderState:
    """A deep copy: a change is made on a copy, saved, and only then kept in memory."""
    return msgspec.json.decode(msgspec.json.encode(state), type=LoaderState)
