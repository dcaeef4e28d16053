"""A log-bucketed latency histogram in the spirit of HdrHistogram.

Values are non-negative integers (the bench records microseconds).  Values
below 256 have a bucket each; above, every power of two is split into 128
buckets, so a percentile is reported within 1/128 (< 0.8 %) of the true value,
at any magnitude, in a few kilobytes.  Buckets are a sparse dict: a histogram
per second of a run costs only the buckets it touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

_SUB_BITS = 8  # values < 2**8 are exact
_HALF = 1 << (_SUB_BITS - 1)  # 128 buckets per power of two above that

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def bucket_index(value: int) -> int:
    """The bucket of ``value`` (>= 0); monotonic in ``value``."""
    shift = max(value.bit_length() - _SUB_BITS, 0)
    return shift * _HALF + (value >> shift)


def bucket_high(index: int) -> int:
    """The largest value that falls in bucket ``index``."""
    shift = max(index // _HALF - 1, 0)
    mantissa = index - shift * _HALF
    return ((mantissa + 1) << shift) - 1


class Histogram:
    __slots__ = ("counts", "total", "sum", "min", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.sum = 0
        self.min = 0
        self.max = 0

    def record(self, value: int, count: int = 1) -> None:
        value = max(int(value), 0)
        index = bucket_index(value)
        self.counts[index] = self.counts.get(index, 0) + count
        if self.total == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.total += count
        self.sum += value * count

    def record_many(self, values: Any) -> None:
        """Record a numpy array (or anything ``numpy.asarray`` takes) at once."""
        import numpy as np

        v = np.maximum(np.asarray(values, dtype=np.int64), 0)
        if v.size == 0:
            return
        # frexp's exponent is the exact bit length for integers below 2**53.
        _, bits = np.frexp(v.astype(np.float64))
        shift = np.maximum(bits.astype(np.int64) - _SUB_BITS, 0)
        index = shift * _HALF + (v >> shift)
        keys, counts = np.unique(index, return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.counts[key] = self.counts.get(key, 0) + count
        low, high = int(v.min()), int(v.max())
        self.min = low if self.total == 0 else min(self.min, low)
        self.max = max(self.max, high)
        self.total += int(v.size)
        self.sum += int(v.sum())

    def merge(self, other: Histogram) -> None:
        if other.total == 0:
            return
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.min = other.min if self.total == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum

    def percentile(self, q: float) -> int:
        """The value at percentile ``q`` (0-100): at least ``q`` % are <= it."""
        if self.total == 0:
            return 0
        rank = max(1, math.ceil(q / 100.0 * self.total))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return min(bucket_high(key), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def summary(self, scale: float = 1e-3, digits: int = 3) -> dict[str, float]:
        """count, p50/p90/p99/p99.9, max and mean, values multiplied by ``scale``."""
        out: dict[str, float] = {"count": float(self.total)}
        for q in PERCENTILES:
            out[f"p{q:g}"] = round(self.percentile(q) * scale, digits)
        out["max"] = round(self.max * scale, digits)
        out["mean"] = round(self.mean * scale, digits)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
            "total": self.total,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        h = cls()
        h.counts = {int(k): int(v) for k, v in data["counts"].items()}
        h.total, h.sum = int(data["total"]), int(data["sum"])
        h.min, h.max = int(data["min"]), int(data["max"])
        return h

    @classmethod
    def of(cls, values: Iterable[int]) -> Histogram:
        h = cls()
        for value in values:
            h.record(value)
        return h
