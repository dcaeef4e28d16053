"""A run: the dedup keys of a span of commits, sorted by hash, in one file.

Layout (little-endian)::

    magic "HGRUN001" | count u64 | blob bytes u64 | probe u64
    hashes   count × u64, ascending
    offsets  (count + 1) × u64 into the blob
    blob     the keys' bytes, in hash order

``probe`` is the hash of a fixed key when the run was written: a run whose
probe differs from this process's hash function (DuckDB's ``hash`` changed in
an upgrade) is refused rather than silently never matching.

A run is written once, staged and committed with the part files of the same
flush (``staging.py``), and never changed; reading is through ``np.memmap``
and a lookup touches a few pages per key looked up, which ``forget_pages``
hands back to the page cache so they do not count in the loader's memory.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hourglass.exceptions import HourglassError

MAGIC = b"HGRUN001"
_HEADER = 32


class RunError(HourglassError):
    """A run file that cannot be used (truncated, or written with another hash)."""


def write_run(path: Path, keys: pa.Array, hashes: np.ndarray, probe: int) -> int:
    """Write ``keys`` (large_binary) with their ``hashes``, sorted; the file's size."""
    order = np.argsort(hashes, kind="stable")
    sorted_keys = keys.take(pa.array(order))
    if not isinstance(sorted_keys, pa.LargeBinaryArray):
        sorted_keys = sorted_keys.cast(pa.large_binary())
    offsets = np.frombuffer(sorted_keys.buffers()[1], dtype=np.int64)[
        sorted_keys.offset : sorted_keys.offset + len(sorted_keys) + 1
    ]
    base = int(offsets[0]) if len(offsets) else 0
    blob = memoryview(sorted_keys.buffers()[2] or b"")[base : base + int(offsets[-1]) - base]
    header = np.array([0, len(keys), len(blob), probe], dtype=np.uint64)
    header[0] = np.frombuffer(MAGIC, dtype=np.uint64)[0]
    with path.open("wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(hashes[order], dtype=np.uint64).tobytes())
        f.write((offsets - base).astype(np.uint64).tobytes())
        f.write(blob)
    return _HEADER + 8 * len(keys) + 8 * (len(keys) + 1) + len(blob)


class Run:
    def __init__(self, path: Path, probe: int) -> None:
        self.path = path
        size = path.stat().st_size
        if size < _HEADER:
            raise RunError(f"{path}: {size} bytes, shorter than a run's header")
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        header = self._map[:_HEADER].view(np.uint64)
        count, blob, theirs = int(header[1]), int(header[2]), int(header[3])
        if self._map[:8].tobytes() != MAGIC or size != _HEADER + 16 * count + 8 + blob:
            raise RunError(f"{path}: not a whole run file ({size} bytes)")
        if theirs != probe:
            raise RunError(f"{path}: written with another key hash (an upgrade of DuckDB?)")
        self.count = count
        self.nbytes = size
        end = _HEADER + 8 * count
        self.hashes = self._map[_HEADER:end].view(np.uint64)
        offsets = self._map[end : end + 8 * (count + 1)].view(np.int64)
        self._keys = pa.Array.from_buffers(
            pa.large_binary(),
            count,
            [None, pa.py_buffer(offsets), pa.py_buffer(self._map[end + 8 * (count + 1) :])],
        )

    def holds(self, keys: pa.Array, hashes: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (with their ``hashes``) this run holds, byte for byte."""
        found = np.zeros(len(keys), dtype=bool)
        if not self.count or not len(keys):
            return found
        at = np.searchsorted(self.hashes, hashes, side="left")
        end = np.searchsorted(self.hashes, hashes, side="right")
        todo = np.flatnonzero(at < end)
        # Usually one entry per hash; a 64-bit collision in the run takes a second round.
        while len(todo):
            same = pc.equal(keys.take(pa.array(todo)), self._keys.take(pa.array(at[todo])))
            equal = same.to_numpy(zero_copy_only=False)
            found[todo[equal]] = True
            at[todo] += 1
            todo = todo[~equal & (at[todo] < end[todo])]
        return found

    def forget_pages(self) -> None:
        """Drop this process's copy of the pages read so far (the page cache keeps them)."""
        raw = getattr(self._map, "_mmap", None)
        if isinstance(raw, mmap.mmap):
            raw.madvise(mmap.MADV_DONTNEED)
