"""Exact deduplication by ``(source, id)`` within a time window.

A duplicate is an event whose ``(source, id)`` is already in the lake (or in the
loader's unflushed rows) within the window, or earlier in the same batch.

How, without a Python loop per event:

1. keys ``len(source):source:id`` are built by Arrow and hashed to 64 bits by
   DuckDB's vectorised ``hash()`` (C++, ~0.06 µs a key);
2. first occurrences within the batch come from ``np.unique`` over the hashes;
   rows whose hash repeats an earlier row's are compared byte for byte with
   that row (a hash collision falls back to an exact Arrow group-by);
3. each hour of the window has a :class:`HashIndex` from hash to where the key's
   bytes are kept: a *chunk* (the keys of one ``add`` call) and a row in it.
   A key whose hash no hour holds is new — the common case, decided in numpy;
4. a hash some hour holds is checked **byte for byte** against the key it
   points at, if that chunk is still in memory (chunks are kept, newest first,
   up to ``memory_bytes``: re-sends mostly follow their first copy closely).
   When the chunk was evicted, or the bytes differ (a 64-bit collision), the
   key is looked up in the hour's stored keys from the :class:`KeySource` (the
   lake's files and unflushed rows), so no hash ever decides alone.

Cost per key: ~0.1 µs to hash, a few numpy passes to probe, and 16 bytes of
index at most half full (32–64 bytes per key) for the current and previous
hour, 8 bytes per key for older hours of the window (sealed: hashes only, so a
hit there takes the slow path), plus the chunk bytes within ``memory_bytes``.

Nothing here is persisted: after a restart the loader rebuilds the indexes
from the lake's files within the window (``add`` with the stored keys), so
dedup survives restarts exactly as far as the files do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hourglass.loader.hashindex import HashIndex, SealedIndex, nonzero

MEMORY_BYTES = 256 * 1024 * 1024
SEAL_AFTER_S = 3600  # an hour that ended this long ago takes no more keys, normally
_ROW_BITS = np.uint64(32)
_ROW_MASK = np.uint64((1 << 32) - 1)

_duck = threading.local()


def keys_of(source: pa.ChunkedArray | pa.Array, ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The dedup key of each row: ``<bytes in source>:<source>:<id>``, as one binary array.

    The length prefix makes the key unambiguous whatever characters source and
    id contain (a plain separator could occur inside either).
    """
    length = pc.cast(pc.binary_length(source), pa.string())
    joined = pc.binary_join_element_wise(length, source, ids, ":")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks() if joined.num_chunks else pa.array([], pa.string())
    return joined.cast(pa.large_binary())


def hash64(keys: pa.Array) -> np.ndarray:
    """A 64-bit hash of each key's bytes (never 0), computed in C by DuckDB.

    One in-memory DuckDB per thread (a connection must not be shared between
    threads); the hash only has to agree within this process, since the
    indexes are rebuilt at start-up.
    """
    con: Any = getattr(_duck, "con", None)
    if con is None:
        con = _duck.con = duckdb.connect(config={"threads": 1})
    if not len(keys):
        return np.zeros(0, dtype=np.uint64)
    table = pa.table({"k": keys})
    hashes: np.ndarray = con.from_arrow(table).project("hash(k) AS h").fetchnumpy()["h"]
    return nonzero(np.asarray(hashes, dtype=np.uint64))


class KeySource(Protocol):
    def keys_in_hour(self, hour: int) -> pa.Array:
        """Every stored or unflushed key whose row is in this hour (epoch seconds)."""
        ...


class Deduper:
    """Dedup state of one event type."""

    def __init__(self, source: KeySource, *, window_s: int, memory_bytes: int = MEMORY_BYTES):
        self._source = source
        self.window_s = window_s
        self.memory_bytes = memory_bytes
        self._hours: dict[int, HashIndex | SealedIndex] = {}
        self._chunks: OrderedDict[int, tuple[int, pa.Array]] = OrderedDict()  # id: hour, keys
        self._chunk_bytes = 0
        self._next_chunk = 0
        self.slow_checks = 0  # lookups that needed the KeySource (for tests and metrics)

    def rebind(self, source: KeySource) -> None:
        """Look keys up in ``source`` from now on (a standby's warm index, handed to
        the loader that owns the stream now)."""
        self._source = source

    def add(self, keys: pa.Array, hours: np.ndarray, hashes: np.ndarray | None = None) -> None:
        """Remember ``keys`` as stored in ``hours`` (epoch seconds of each row's hour);
        ``hashes``: their :func:`hash64`, if the caller has it already."""
        if hashes is None:
            hashes = hash64(keys)
        distinct = np.unique(hours)
        for hour in distinct:
            rows = hours == hour
            some = keys if len(distinct) == 1 else keys.filter(pa.array(rows))
            chunk = self._keep_chunk(int(hour), some)
            refs = (np.uint64(chunk) << _ROW_BITS) | np.arange(len(some), dtype=np.uint64)
            index = self._hours.get(int(hour))
            if isinstance(index, SealedIndex):  # a restart, or skew into an old hour
                index = index.unseal()
            elif index is None:
                # Sized like the newest hour so far: at a steady rate it never grows.
                newest = max(self._hours, default=None)
                index = HashIndex(self._hours[newest].count if newest is not None else 0)
            index.insert(hashes if len(distinct) == 1 else hashes[rows], refs)
            self._hours[int(hour)] = index

    def _keep_chunk(self, hour: int, keys: pa.Array) -> int:
        chunk = self._next_chunk
        self._next_chunk += 1
        self._chunks[chunk] = (hour, keys)
        self._chunk_bytes += keys.nbytes
        while self._chunk_bytes > self.memory_bytes and self._chunks:
            _, (_, old) = self._chunks.popitem(last=False)
            self._chunk_bytes -= old.nbytes
        return chunk

    def fresh(self, keys: pa.Array, hashes: np.ndarray | None = None) -> np.ndarray:
        """Mask of rows to keep: first in the batch and not stored within the window."""
        n = len(keys)
        if n == 0:
            return np.zeros(0, dtype=bool)
        if hashes is None:
            hashes = hash64(keys)
        keep = _first_in_batch(keys, hashes)
        for hour in sorted(self._hours):
            candidates = np.flatnonzero(keep)
            if not len(candidates):
                break
            slots = self._hours[hour].find(hashes[candidates])
            hit = slots >= 0
            if hit.any():
                suspects = candidates[hit]
                refs = self._hours[hour].refs(slots[hit])
                same, unsure = self._compare(keys, suspects, refs)
                keep[suspects[same]] = False
                if unsure.any():
                    self.slow_checks += 1
                    doubtful = suspects[unsure]
                    stored = self._source.keys_in_hour(hour)
                    found = pc.is_in(keys.take(pa.array(doubtful)), value_set=stored)
                    keep[doubtful[found.to_numpy(zero_copy_only=False)]] = False
        return keep

    def _compare(
        self, keys: pa.Array, suspects: np.ndarray, refs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Byte comparison of each suspect with the key its hash points at:
        (equal, unknown); unknown where that chunk is gone or the bytes differ."""
        same = np.zeros(len(suspects), dtype=bool)
        unsure = np.ones(len(suspects), dtype=bool)
        chunk_of = refs >> _ROW_BITS
        for chunk in np.unique(chunk_of):
            kept = self._chunks.get(int(chunk))
            if kept is None:
                continue
            at = np.flatnonzero(chunk_of == chunk)
            theirs = kept[1].take(pa.array(refs[at] & _ROW_MASK))
            equal = pc.equal(keys.take(pa.array(suspects[at])), theirs)
            equal_np = equal.to_numpy(zero_copy_only=False)
            same[at] = equal_np
            unsure[at] = ~equal_np
        return same, unsure

    def expire(self, now_s: int) -> list[int]:
        """Forget hours that ended before the window, seal those that ended an hour
        ago (their key bytes are dropped too); returns the hours forgotten."""
        old = [h for h in self._hours if h + 3600 <= now_s - self.window_s]
        for hour in old:
            del self._hours[hour]
        for hour, index in self._hours.items():
            if isinstance(index, HashIndex) and hour + 3600 + SEAL_AFTER_S <= now_s:
                self._hours[hour] = SealedIndex(index)
        live = {h for h, index in self._hours.items() if isinstance(index, HashIndex)}
        for chunk in [c for c, (hour, _) in self._chunks.items() if hour not in live]:
            self._chunk_bytes -= self._chunks.pop(chunk)[1].nbytes
        return old

    def hours(self) -> Iterable[int]:
        return self._hours.keys()

    @property
    def nbytes(self) -> int:
        return sum(index.nbytes for index in self._hours.values()) + self._chunk_bytes


def _first_in_batch(keys: pa.Array, hashes: np.ndarray) -> np.ndarray:
    """True for the first row of each distinct key in the batch."""
    keep = np.zeros(len(keys), dtype=bool)
    _, first, group = np.unique(hashes, return_index=True, return_inverse=True)
    keep[first] = True
    repeats = np.flatnonzero(~keep)
    if not len(repeats):
        return keep
    earlier = first[group.reshape(-1)[repeats]]
    equal = pc.equal(keys.take(pa.array(repeats)), keys.take(pa.array(earlier)))
    if pc.all(equal).as_py():
        return keep
    # Two different keys share a hash: settle this batch exactly.
    keep[:] = False
    keep[
        pa.table({"k": keys, "i": pa.array(np.arange(len(keys)))})
        .group_by("k", use_threads=False)
        .aggregate([("i", "min")])
        .column("i_min")
        .to_numpy()
    ] = True
    return keep
