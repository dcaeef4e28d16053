"""A hash table of 64-bit key hashes, built and probed a whole batch at a time.

Open addressing with linear probing in one numpy array of ``(hash, ref)`` pairs
(a slot's pair shares a cache line: one memory miss per probe); an
empty slot holds hash 0, so callers never pass 0 (:func:`nonzero`).  The table
doubles before it is half full, which keeps the expected probes per lookup
under ~2.5.  Each probing round is a handful of numpy operations over the keys
still unresolved, so a batch of *n* keys costs O(n) C work and a few dozen
Python steps however large the table is.

It holds the dedup memtable (``memtable.py``): keys since the last run, sized
for them up front so it does not grow on the hot path.  Nothing here is
persisted.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIN_BITS = 10


def nonzero(hashes: np.ndarray) -> np.ndarray:
    """Hashes with 0 (the empty-slot mark) replaced by 1: a collision, never a loss."""
    return np.where(hashes == 0, np.uint64(1), hashes).astype(np.uint64, copy=False)


class HashIndex:
    """hash → ref (a caller's 64-bit locator, unique per entry); a hash may occur
    more than once, for different keys that collide."""

    def __init__(self, expected: int = 0) -> None:
        """``expected``: keys it will likely hold (sized for them, so it need not grow)."""
        self._alloc(max(_MIN_BITS, (expected * 2).bit_length()))
        self.count = 0

    def _alloc(self, bits: int) -> None:
        self._bits = bits
        self._mask = np.uint64((1 << bits) - 1)
        self._shift = np.uint64(64 - bits)
        # np.full, not np.zeros: numpy asks for transparent huge pages for the
        # arrays it allocates itself, while calloc'd zeros fault in 4 KiB at a
        # time on first write (measured: ~10x slower inserts into a new table).
        self._slots = np.full((1 << bits, 2), 0, dtype=np.uint64)

    def _home(self, hashes: np.ndarray) -> np.ndarray:
        # Fibonacci hashing: the top bits of h·φ, so a weak low half still spreads.
        home: np.ndarray = (hashes * _GOLDEN) >> self._shift
        return home

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """The slot of the first entry with each hash, or -1 where there is none."""
        found = np.full(len(hashes), -1, dtype=np.int64)
        todo = np.arange(len(hashes))
        slot = self._home(hashes)
        while len(todo):
            held = self._slots[slot, 0]
            hit = held == hashes[todo]
            found[todo[hit]] = slot[hit].astype(np.int64)
            more = (held != 0) & ~hit
            todo, slot = todo[more], (slot[more] + np.uint64(1)) & self._mask
        return found

    def refs(self, slots: np.ndarray) -> np.ndarray:
        refs: np.ndarray = self._slots[slots, 1]
        return refs

    def insert(self, hashes: np.ndarray, refs: np.ndarray) -> None:
        if not len(hashes):
            return
        need = self.count + len(hashes)
        if need * 2 > len(self._slots):
            self._grow(need)
        self._place(hashes, refs)
        self.count = need

    def _grow(self, need: int) -> None:
        old = self._slots[self._slots[:, 0] != 0]
        self._alloc(max(_MIN_BITS, (need * 2).bit_length()))
        self._place(old[:, 0], old[:, 1])

    def _place(self, hashes: np.ndarray, refs: np.ndarray) -> None:
        """Refs are unique, which settles races for a slot without sorting: every
        key that found the same free slot writes its ref there, one write lands,
        and reading the slot back tells each key whether it was the one."""
        todo = np.arange(len(hashes))
        slot = self._home(hashes)
        while len(todo):
            free = self._slots[slot, 0] == 0
            if free.any():
                claims, mine = slot[free], todo[free]
                self._slots[claims, 1] = refs[mine]
                won = self._slots[claims, 1] == refs[mine]
                self._slots[claims[won], 0] = hashes[mine[won]]
                placed = np.zeros(len(todo), dtype=bool)
                placed[np.flatnonzero(free)[won]] = True
                todo, slot = todo[~placed], slot[~placed]
            slot = (slot + np.uint64(1)) & self._mask

    @property
    def nbytes(self) -> int:
        return self._slots.nbytes
