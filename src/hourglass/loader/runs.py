"""A run: the dedup keys of a span of commits, in one file, searchable by hash.

Layout (little-endian)::

    magic "HGRUN003" | count u64 | blob bytes u64 | probe u64 | bits u64
    hashes   count × u64, in order of (hash >> bits), ties by position
    order    count × u32 (padded to 8 bytes): the position of each hash's key
    offsets  (count + 1) × u64 into the blob, keys in the order they came
    blob     the keys' bytes
    fence    every PAGE-th hash (ceil(count / PAGE) × u64, at the end, unaligned)

Sorting is one ``np.sort`` of the hashes with each key's position packed into
their low ``bits`` bits (an argsort and a reorder of the key bytes cost ~4x
more, measured); the keys stay as they came.  So ``hashes`` is sorted by its
top ``64 - bits`` bits only: a lookup searches the range of the query's prefix
and compares whole hashes, then the bytes (``holds``).

``probe`` is the hash of a fixed key when the run was written: a run whose
probe differs from this process's hash function (DuckDB's ``hash`` changed in
an upgrade) is refused rather than silently never matching.

A run is written once, staged and committed with the part files of the same
flush (``staging.py``), and never changed.  Reading is through ``np.memmap``;
the fence is copied into memory (8 bytes per PAGE keys), so a lookup reads one
page of hashes (the block the fence points at) instead of a binary search's
~20, and the deduper hands the pages read back to the page cache after each
batch (``forget_pages``): measured in a 30-minute soak, binary searches over
every run of a slice kept ~8 bytes per key of the window mapped (920 MiB at
18 minutes) and growing.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hourglass.exceptions import HourglassError

MAGIC = b"HGRUN003"
_HEADER = 40
PAGE = 512  # hashes per fence step: one 4 KiB page


class RunError(HourglassError):
    """A run file that cannot be used (truncated, or written with another hash)."""


def sort_hashes(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(hashes in prefix order, the position of each, bits): see the module docstring."""
    n = len(hashes)
    bits = max(1, (n - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    packed = (hashes.astype(np.uint64, copy=False) & ~low) | np.arange(n, dtype=np.uint64)
    packed.sort()
    order = packed & low
    return hashes[order], order.astype(np.uint32), bits


def write_run(
    out: Path | BinaryIO, chunks: Sequence[pa.Array], hashes: np.ndarray, probe: int
) -> tuple[int, np.ndarray]:
    """Write the keys of ``chunks`` (large_binary, in order) with their ``hashes``;
    the file's size and the hashes in the file's order (to fill a filter)."""
    count = sum(len(c) for c in chunks)
    assert count == len(hashes)
    ordered, order, bits = sort_hashes(hashes)
    pad = (-4 * count) % 8
    blob = 0
    with out.open("wb") if isinstance(out, Path) else contextlib.nullcontext(out) as f:
        total = sum(int(_offsets(c)[-1] - _offsets(c)[0]) for c in chunks if len(c))
        header = np.array([0, count, total, probe, bits], dtype=np.uint64)
        header[0] = np.frombuffer(MAGIC, dtype=np.uint64)[0]
        f.write(header.tobytes())
        f.write(ordered.tobytes())
        f.write(order.tobytes() + b"\0" * pad)
        f.write(np.zeros(1, dtype=np.uint64).tobytes())
        for chunk in chunks:  # offsets, rebased: chunk after chunk
            if len(chunk):
                offsets = _offsets(chunk)
                f.write((offsets[1:] - offsets[0] + blob).astype(np.uint64).tobytes())
                blob += int(offsets[-1] - offsets[0])
        for chunk in chunks:
            offsets = _offsets(chunk) if len(chunk) else np.zeros(1, dtype=np.int64)
            data = chunk.buffers()[2]
            if data is not None and offsets[-1] > offsets[0]:
                f.write(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        f.write(ordered[::PAGE].tobytes())
    fence = 8 * -(-count // PAGE)
    return _HEADER + 12 * count + pad + 8 * (count + 1) + blob + fence, ordered


def _offsets(chunk: pa.Array) -> np.ndarray:
    if not isinstance(chunk, pa.LargeBinaryArray):
        raise TypeError(f"keys must be large_binary, not {chunk.type}")
    raw = np.frombuffer(chunk.buffers()[1], dtype=np.int64)
    return raw[chunk.offset : chunk.offset + len(chunk) + 1]


class Run:
    def __init__(self, path: Path, probe: int) -> None:
        self.path = path
        size = path.stat().st_size
        if size < _HEADER:
            raise RunError(f"{path}: {size} bytes, shorter than a run's header")
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        header = self._map[:_HEADER].view(np.uint64)
        count, blob, theirs, bits = (int(v) for v in header[1:5])
        pad = (-4 * count) % 8
        fence = 8 * -(-count // PAGE)
        if (
            self._map[:8].tobytes() != MAGIC
            or size != _HEADER + 12 * count + pad + 8 + 8 * count + blob + fence
        ):
            raise RunError(f"{path}: not a whole run file ({size} bytes)")
        if theirs != probe:
            raise RunError(f"{path}: written with another key hash (an upgrade of DuckDB?)")
        self.count = count
        self.nbytes = size
        self._low = np.uint64((1 << bits) - 1)
        at = _HEADER
        self.hashes = self._map[at : at + 8 * count].view(np.uint64)
        at += 8 * count
        self._order = self._map[at : at + 4 * count].view(np.uint32)
        at += 4 * count + pad
        offsets = self._map[at : at + 8 * (count + 1)].view(np.int64)
        at += 8 * (count + 1)
        self._keys = pa.Array.from_buffers(
            pa.large_binary(),
            count,
            [None, pa.py_buffer(offsets), pa.py_buffer(self._map[at : at + blob])],
        )
        self._fence = np.frombuffer(self._map[at + blob :].tobytes(), dtype=np.uint64)

    def holds(self, keys: pa.Array, hashes: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (with their ``hashes``) this run holds, byte for byte.

        The entries of a hash's prefix are contiguous; the fence says in which
        block of PAGE they begin, and that block is the one read.  A prefix whose
        entries may go on into the next block (the next fence value has it too)
        takes the exact binary search instead: rare, and still exact."""
        found = np.zeros(len(keys), dtype=bool)
        if not self.count or not len(keys):
            return found
        h = hashes.astype(np.uint64, copy=False)
        prefix = h & ~self._low
        block = np.maximum(np.searchsorted(self._fence, prefix, side="left") - 1, 0)
        after = block + 1
        spills = after < len(self._fence)
        spills[spills] = (self._fence[after[spills]] & ~self._low) == prefix[spills]
        simple = np.flatnonzero(~spills)
        if len(simple):
            at = block[simple, None] * PAGE + np.arange(PAGE)
            np.minimum(at, self.count - 1, out=at)
            row, col = np.nonzero(np.take(self.hashes, at) == h[simple, None])
            self._confirm(keys, found, simple[row], at[row, col])
        rare = np.flatnonzero(spills)
        if len(rare):
            self._search(keys, h, prefix, found, rare)
        return found

    def _confirm(
        self, keys: pa.Array, found: np.ndarray, query: np.ndarray, pos: np.ndarray
    ) -> None:
        """Queries whose hash equals the entry at ``pos``: compare the bytes."""
        if not len(query):
            return
        theirs = self._keys.take(pa.array(self._order[pos]))
        equal = pc.equal(keys.take(pa.array(query)), theirs).to_numpy(zero_copy_only=False)
        found[query[equal]] = True

    def _search(
        self, keys: pa.Array, h: np.ndarray, prefix: np.ndarray, found: np.ndarray, todo: np.ndarray
    ) -> None:
        at = np.searchsorted(self.hashes, prefix[todo], side="left")
        end = np.searchsorted(self.hashes, prefix[todo] | self._low, side="right")
        while len(todo):
            live = at < end
            todo, at, end = todo[live], at[live], end[live]
            same = np.asarray(self.hashes[at]) == h[todo] if len(todo) else np.zeros(0, bool)
            self._confirm(keys, found, todo[same], at[same])
            at = at + 1
            keep = ~found[todo]
            todo, at, end = todo[keep], at[keep], end[keep]

    def forget_pages(self) -> None:
        """Drop this process's copy of the pages read so far (the page cache keeps them)."""
        raw = getattr(self._map, "_mmap", None)
        if isinstance(raw, mmap.mmap):
            raw.madvise(mmap.MADV_DONTNEED)
