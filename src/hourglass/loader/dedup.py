"""Exact deduplication by ``(source, id)`` within a time window, in bounded memory.

A duplicate is an event whose ``(source, id)`` is already in the lake (or in the
loader's unflushed rows) within the window, or earlier in the same batch.

How, without a Python loop per event:

1. keys ``len(source):source:id`` are built by Arrow; two 64-bit hashes per key are
   computed with numpy over the key bytes (a polynomial hash per key, then a
   splitmix64 finaliser);
2. first occurrences within the batch come from an Arrow group-by;
3. each hour of the window has a Bloom filter (a chain of growing filters, 10
   bits and 7 probes per key: ~1% false positives, ~1.2 bytes per key); a key
   that no filter may contain is new — the common case, decided in numpy;
4. a key some hour's filter may contain is checked **exactly** against that
   hour's stored keys (read from its Parquet files and the unflushed rows by
   the :class:`KeySource`), so a false positive never drops an event.

Nothing here is persisted: after a restart the loader rebuilds the filters from
the lake's files within the window (``add`` with the stored keys), so dedup
survives restarts exactly as far as the files do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_K = 7
_FIRST_CAPACITY = 1 << 16
_BITS_PER_KEY = 10
_P1 = np.uint64(0x9E3779B97F4A7C15)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)


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


def _powers(n: int, base: np.uint64) -> np.ndarray:
    out = np.full(max(n, 1), base, dtype=np.uint64)
    out[0] = 1
    powers: np.ndarray = np.multiply.accumulate(out)  # wraps modulo 2**64, as intended
    return powers


def _mix(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = z ^ (z >> np.uint64(31))
    return mixed


def hashes(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two independent-enough 64-bit hashes per key (keys are never empty)."""
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    _, offsets_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=n + 1, offset=keys.offset * 8)
    start, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buf, dtype=np.uint8)[start:end].astype(np.uint64)
    lengths = np.diff(offsets)
    starts = offsets[:-1] - start
    position = np.arange(end - start) - np.repeat(starts, lengths)
    longest = int(lengths.max())
    h1 = np.add.reduceat(data * _powers(longest, _P1)[position], starts)
    h2 = np.add.reduceat(data * _powers(longest, _P2)[position], starts)
    size = lengths.astype(np.uint64)
    return _mix(h1 ^ size), _mix(h2 + size) | np.uint64(1)


class _Bloom:
    __slots__ = ("bits", "mask", "capacity", "count")

    def __init__(self, capacity: int) -> None:
        m = 1 << max(10, int(capacity * _BITS_PER_KEY - 1).bit_length())
        self.bits = np.zeros(m // 64, dtype=np.uint64)
        self.mask = np.uint64(m - 1)
        self.capacity = capacity
        self.count = 0

    def _probes(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        steps = np.arange(_K, dtype=np.uint64)
        probes: np.ndarray = (h1[:, None] + steps * h2[:, None]) & self.mask
        return probes

    def add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        probes = self._probes(h1, h2).ravel()
        np.bitwise_or.at(
            self.bits, probes >> np.uint64(6), np.uint64(1) << (probes & np.uint64(63))
        )
        self.count += len(h1)

    def may_contain(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        probes = self._probes(h1, h2)
        words = self.bits[probes >> np.uint64(6)]
        hit = (words >> (probes & np.uint64(63))) & np.uint64(1)
        return np.asarray(hit.all(axis=1))


class _HourFilter:
    """A chain of Bloom filters, each four times larger than the last."""

    def __init__(self) -> None:
        self.blooms = [_Bloom(_FIRST_CAPACITY)]

    def add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        done = 0
        while done < len(h1):
            bloom = self.blooms[-1]
            room = bloom.capacity - bloom.count
            if room <= 0:
                self.blooms.append(_Bloom(bloom.capacity * 4))
                continue
            take = min(room, len(h1) - done)
            bloom.add(h1[done : done + take], h2[done : done + take])
            done += take

    def may_contain(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(h1), dtype=bool)
        for bloom in self.blooms:
            hit |= bloom.may_contain(h1, h2)
        return hit

    @property
    def nbytes(self) -> int:
        return sum(b.bits.nbytes for b in self.blooms)


class KeySource(Protocol):
    def keys_in_hour(self, hour: int) -> pa.Array:
        """Every stored or unflushed key whose row is in this hour (epoch seconds)."""
        ...


class Deduper:
    """Dedup state of one event type."""

    def __init__(self, source: KeySource, *, window_s: int) -> None:
        self._source = source
        self.window_s = window_s
        self._hours: dict[int, _HourFilter] = {}

    def add(self, keys: pa.Array, hours: np.ndarray) -> None:
        """Remember ``keys`` as stored in ``hours`` (epoch seconds of each row's hour)."""
        h1, h2 = hashes(keys)
        for hour in np.unique(hours):
            rows = hours == hour
            self._hours.setdefault(int(hour), _HourFilter()).add(h1[rows], h2[rows])

    def fresh(self, keys: pa.Array) -> np.ndarray:
        """Mask of rows to keep: first in the batch and not stored within the window."""
        n = len(keys)
        keep = np.zeros(n, dtype=bool)
        if n == 0:
            return keep
        first = (
            pa.table({"k": keys, "i": pa.array(np.arange(n))})
            .group_by("k", use_threads=False)
            .aggregate([("i", "min")])
            .column("i_min")
            .to_numpy()
        )
        keep[first] = True
        h1, h2 = hashes(keys)
        for hour in sorted(self._hours):
            candidates = np.flatnonzero(keep)
            if not len(candidates):
                break
            maybe = self._hours[hour].may_contain(h1[candidates], h2[candidates])
            if maybe.any():
                suspects = candidates[maybe]
                stored = self._source.keys_in_hour(hour)
                found = pc.is_in(keys.take(pa.array(suspects)), value_set=stored)
                keep[suspects[found.to_numpy(zero_copy_only=False)]] = False
        return keep

    def expire(self, now_s: int) -> list[int]:
        """Forget hours that ended before the window; returns them."""
        old = [h for h in self._hours if h + 3600 <= now_s - self.window_s]
        for hour in old:
            del self._hours[hour]
        return old

    def hours(self) -> Iterable[int]:
        return self._hours.keys()

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._hours.values())
