"""The dedup keys since the last run was written, in memory, exact.

A :class:`~hourglass.loader.hashindex.HashIndex` from each key's hash to where
its bytes are (the chunk of one ``add`` call, a row in it); every chunk is kept,
so a hash that matches is confirmed byte for byte.  A match whose bytes differ
(a 64-bit collision) is settled against every key held, exactly.

Bounded by the deduper: it writes the memtable out as a run once it holds
``run_keys`` keys (``dedup.py``), so the table is sized for that up front and
does not grow (no rehash on the hot path) unless one flush alone overshoots.
Nothing here is persisted: after a crash these keys are read back from the part
files committed after the last run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hourglass.loader.hashindex import HashIndex

_ROW_BITS = np.uint64(32)
_ROW_MASK = np.uint64((1 << 32) - 1)


class Memtable:
    def __init__(self, expected: int) -> None:
        self._expected = expected
        self.clear()

    def clear(self) -> None:
        self._index = HashIndex(0)  # sized at the first add: a standby holds no table
        self._chunks: list[pa.Array] = []
        self._hashes: list[np.ndarray] = []
        self.count = 0
        self.key_bytes = 0
        self.since: float | None = None  # when the first key came (the caller's clock)

    @property
    def nbytes(self) -> int:
        return self._index.nbytes + self.key_bytes + 8 * self.count

    def add(self, keys: pa.Array, hashes: np.ndarray, now: float) -> None:
        if not len(keys):
            return
        if self.since is None:
            self.since = now
        chunk = len(self._chunks)
        if not chunk:
            self._index = HashIndex(max(self._expected, len(keys)))
        self._chunks.append(keys)
        self._hashes.append(hashes)
        refs = (np.uint64(chunk) << _ROW_BITS) | np.arange(len(keys), dtype=np.uint64)
        self._index.insert(hashes, refs)
        self.count += len(keys)
        self.key_bytes += keys.nbytes

    def holds(self, keys: pa.Array, hashes: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (with their ``hashes``) are held, byte for byte."""
        found = np.zeros(len(keys), dtype=bool)
        if not self.count or not len(keys):
            return found
        slots = self._index.find(hashes)
        suspects = np.flatnonzero(slots >= 0)
        if not len(suspects):
            return found
        refs = self._index.refs(slots[suspects])
        chunk_of = refs >> _ROW_BITS
        unsure = np.zeros(len(suspects), dtype=bool)
        for chunk in np.unique(chunk_of):
            at = np.flatnonzero(chunk_of == chunk)
            theirs = self._chunks[int(chunk)].take(pa.array(refs[at] & _ROW_MASK))
            equal = pc.equal(keys.take(pa.array(suspects[at])), theirs)
            same = equal.to_numpy(zero_copy_only=False)
            found[suspects[at[same]]] = True
            unsure[at[~same]] = True
        if unsure.any():  # same hash, other bytes: look at every key held
            doubtful = suspects[unsure]
            held = pc.is_in(keys.take(pa.array(doubtful)), value_set=self.keys())
            found[doubtful[held.to_numpy(zero_copy_only=False)]] = True
        return found

    def chunks(self) -> list[pa.Array]:
        return list(self._chunks)

    def keys(self) -> pa.Array:
        if not self._chunks:
            return pa.array([], pa.large_binary())
        return pa.concat_arrays(self._chunks)

    def hashes(self) -> np.ndarray:
        if not self._hashes:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate(self._hashes)
