"""A Bloom filter per time slice of the dedup window, all slices probed in one pass.

Bit-sliced and blocked: one 64-bit word per (block, slice), a key's block picked
by its hash and ``K`` of the word's bits set for it.  The words of one block for
every slice sit side by side, so asking "which slices may hold this key?" is one
gather of a row (a few cache lines), whatever the number of slices; clearing a
slice (it left the window) is zeroing one column, and a new slice reuses it.

At 16 bits per key (4 keys per word on average, K = 6) a slice answers "maybe"
for about 0.1 % of keys it does not hold (measured by ``tests/unit/loader/
test_filter.py``); a "maybe" is settled on disk by the slice's runs (``runs.py``),
so a false positive costs a lookup, never a dropped event.  A filter only errs
that way: a key added to a slice is always reported for it.

Nothing here is persisted by itself: the deduper saves a sealed slice's column
with its runs (``column``/``load_column``) and rebuilds the open one's.
"""

from __future__ import annotations

import numpy as np

BITS_PER_KEY = 16
K = 6
_ONE = np.uint64(1)
_SIX = np.uint64(63)
_32 = np.uint64(32)


class SliceFilter:
    def __init__(self, memory_bytes: int, slices: int) -> None:
        if not 1 <= slices <= 64:
            raise ValueError(f"slices must be 1..64, not {slices}")
        blocks = min(1 << 32, max(64, memory_bytes // (8 * slices)))
        self.slices = slices
        self._blocks = np.uint64(blocks)
        # np.zeros: pages are taken as slices fill, so a loader that owns
        # nothing (a standby) holds no filter memory.
        self.words = np.zeros((blocks, slices), dtype=np.uint64)
        # Columns with a bit set since their last clear.  Clearing a column writes
        # one word in every row, so it touches every page of the matrix: on fresh
        # pages that cost 2.1 s for 768 MiB (measured), all on the hot path, and
        # took the whole budget's RSS at the first run.  Clean columns are skipped.
        self._dirty = np.zeros(slices, dtype=bool)

    @property
    def blocks(self) -> int:
        return len(self.words)

    @property
    def capacity(self) -> int:
        """Keys one slice holds at ``BITS_PER_KEY``; beyond it false positives grow."""
        return self.blocks * 64 // BITS_PER_KEY

    @property
    def nbytes(self) -> int:
        return self.words.nbytes

    def _where(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = hashes.astype(np.uint64, copy=False)
        # Any number of blocks (no power of two wasting up to half the budget):
        # the top 32 bits of h scaled to the range, so hashes sorted by their top
        # bits (a run's, ``runs.py``) come in block order; the mask is from the
        # low 36 bits.
        block = ((h >> _32) * self._blocks) >> _32
        mask = np.zeros(len(h), dtype=np.uint64)
        for i in range(K):
            mask |= _ONE << ((h >> np.uint64(6 * i)) & _SIX)
        return block, mask

    def add(self, column: int, hashes: np.ndarray, *, in_order: bool = False) -> None:
        """Add ``hashes`` to a slice; ``in_order``: sorted by their top 32 bits (a
        run's hashes), which saves a sort (measured: 9x faster)."""
        if not len(hashes):
            return
        block, mask = self._where(hashes)
        if not in_order:
            order = np.argsort(block, kind="stable")
            block, mask = block[order], mask[order]
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        merged = np.bitwise_or.reduceat(mask, starts)
        self._dirty[column] = True
        self.words[block[starts], column] |= merged

    def candidates(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, slices): every key row that some slice may hold, and for each such
        row a boolean row of the slices that may (columns not in use never match:
        they are all zero, and a mask is never zero)."""
        block, mask = self._where(hashes)
        rows = np.take(self.words, block, axis=0)
        # In place, and a min rather than any(): a word holds the key's bits iff
        # (word & mask) ^ mask is 0 (measured 3-4x faster than == then any()).
        np.bitwise_and(rows, mask[:, None], out=rows)
        np.bitwise_xor(rows, mask[:, None], out=rows)
        hit = np.flatnonzero(rows.min(axis=1) == 0)
        return hit, rows[hit] == 0

    def clear(self, column: int) -> None:
        if self._dirty[column]:
            self.words[:, column] = 0
            self._dirty[column] = False

    def column(self, column: int) -> bytes:
        return np.ascontiguousarray(self.words[:, column]).tobytes()

    def load_column(self, column: int, data: bytes) -> None:
        words = np.frombuffer(data, dtype=np.uint64)
        if len(words) != self.blocks:
            raise ValueError(
                f"a filter column of {len(words)} blocks, this filter has {self.blocks}"
            )
        self._dirty[column] = True
        self.words[:, column] = words
