"""The Deduper against a Python set model; ``keys_of`` and ``hashes`` stability."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.loader import dedup
from hourglass.loader.dedup import Deduper, hashes, keys_of

HOUR = 3600
_M64 = (1 << 64) - 1


class Store:
    """KeySource: the keys stored per hour, as the lake would hold them."""

    def __init__(self) -> None:
        self.by_hour: dict[int, list[bytes]] = {}
        self.queries = 0

    def keys_in_hour(self, hour: int) -> pa.Array:
        self.queries += 1
        return pa.array(self.by_hour.get(hour, []), pa.large_binary())


def _run_model(batches: list[list[tuple[bytes, int]]], window_s: int = 10 * HOUR) -> Store:
    """Feed batches of (key, hour index); check every keep mask against a set model."""
    store = Store()
    deduper = Deduper(store, window_s=window_s)
    seen: dict[bytes, int] = {}  # key -> hour stored
    for batch in batches:
        keys = pa.array([k for k, _ in batch], pa.large_binary())
        hours = np.array([h * HOUR for _, h in batch], dtype=np.int64)
        keep = deduper.fresh(keys)
        want, in_batch = [], set()
        for k, _ in batch:
            want.append(k not in seen and k not in in_batch)
            in_batch.add(k)
        assert keep.tolist() == want
        kept = pa.array(keep)
        deduper.add(keys.filter(kept), hours[keep])
        for (k, h), kept_one in zip(batch, keep.tolist(), strict=True):
            if kept_one:
                seen[k] = h * HOUR
                store.by_hour.setdefault(h * HOUR, []).append(k)
    return store


_keys = st.binary(min_size=1, max_size=6)  # short keys: many collisions of bytes
_batches = st.lists(st.lists(st.tuples(_keys, st.integers(0, 3)), max_size=40), max_size=8)


@settings(max_examples=150, deadline=None)
@given(_batches)
def test_fresh_matches_a_set_model(batches: list[list[tuple[bytes, int]]]) -> None:
    _run_model(batches)


@settings(max_examples=100, deadline=None)
@given(_batches)
def test_a_saturated_bloom_never_drops_a_new_key(
    batches: list[list[tuple[bytes, int]]],
) -> None:
    """Bloom filters of 1024 bits for 65536 keys: nearly every probe is a false positive."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dedup, "_BITS_PER_KEY", 0)
        _run_model(batches)


def test_false_positives_are_resolved_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many keys through a tiny filter: false positives happen, and none drops a key."""
    monkeypatch.setattr(dedup, "_BITS_PER_KEY", 0)
    monkeypatch.setattr(dedup, "_FIRST_CAPACITY", 64)  # and the chain of filters grows
    rng = np.random.default_rng(7)
    batches = [
        [
            (b"k%d" % i, int(h))
            for i, h in zip(range(n, n + 500), rng.integers(0, 3, 500), strict=True)
        ]
        for n in range(0, 5000, 500)
    ]
    store = _run_model(batches)
    assert store.queries > 5, "the filters never said maybe: the exact check was not exercised"
    # And every key of the last batches is then correctly a duplicate.
    _run_model(batches + batches[-2:])


def test_expired_hours_are_forgotten() -> None:
    store = Store()
    deduper = Deduper(store, window_s=2 * HOUR)
    keys = pa.array([b"a", b"b"], pa.large_binary())
    deduper.add(keys, np.array([0, 5 * HOUR], dtype=np.int64))
    store.by_hour = {0: [b"a"], 5 * HOUR: [b"b"]}
    assert deduper.expire(3 * HOUR - 1) == []  # hour 0 ended 2h - 1s ago: still in the window
    assert deduper.fresh(keys).tolist() == [False, False]
    assert deduper.expire(3 * HOUR) == [0]
    assert set(deduper.hours()) == {5 * HOUR}
    assert deduper.fresh(keys).tolist() == [True, False]


# ----------------------------------------------------------------- keys, hashes


def _reference(key: bytes) -> tuple[int, int]:
    """The documented hash, in plain Python: polynomial per key, splitmix64 finaliser."""
    p1, p2 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F
    h1 = sum(b * pow(p1, i, 1 << 64) for i, b in enumerate(key)) & _M64
    h2 = sum(b * pow(p2, i, 1 << 64) for i, b in enumerate(key)) & _M64

    def mix(z: int) -> int:
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & _M64
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    n = len(key)
    return mix(h1 ^ n), mix((h2 + n) & _M64) | 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30), st.data())
def test_hashes_are_a_function_of_the_key_bytes_only(
    keys: list[bytes], data: st.DataObject
) -> None:
    array = pa.array(keys, pa.large_binary())
    h1, h2 = hashes(array)
    assert [(int(a), int(b)) for a, b in zip(h1, h2, strict=True)] == [_reference(k) for k in keys]
    # Wherever the key sits: a slice (non-zero offset), another batch, a concatenation.
    start = data.draw(st.integers(0, len(keys) - 1))
    stop = data.draw(st.integers(start + 1, len(keys)))
    s1, s2 = hashes(array.slice(start, stop - start))
    assert s1.tolist() == h1[start:stop].tolist() and s2.tolist() == h2[start:stop].tolist()
    joined = pa.concat_arrays([pa.array([b"prefix"], pa.large_binary()), array])
    j1, _ = hashes(joined)
    assert j1[1:].tolist() == h1.tolist()
    assert h2.tolist() == [x | 1 for x in h2.tolist()]  # the step is odd: probes differ


def test_hashes_of_no_keys() -> None:
    h1, h2 = hashes(pa.array([], pa.large_binary()))
    assert len(h1) == len(h2) == 0


def test_keys_of_prefixes_the_source_length() -> None:
    source = pa.chunked_array([["/a", "/b"], ["/c"]])
    ids = pa.chunked_array([["1", "2"], ["3"]])
    keys = keys_of(source, ids)
    assert keys.type == pa.large_binary()
    assert keys.to_pylist() == [b"2:/a:1", b"2:/b:2", b"2:/c:3"]
    assert keys_of(pa.array(["/a"]), pa.array(["1"])).to_pylist() == [b"2:/a:1"]
    empty = keys_of(pa.chunked_array([], pa.string()), pa.chunked_array([], pa.string()))
    assert len(empty) == 0 and empty.type == pa.large_binary()
    # Same (source, id), same key and hashes, however the batch is chunked.
    assert (
        hashes(keys)[0].tolist()
        == hashes(pa.array(keys.to_pylist(), pa.large_binary()))[0].tolist()
    )


# The key must be injective for any strings the gateway accepts, control
# characters and separators included.
_ATTRIBUTE = st.text(
    st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ATTRIBUTE, _ATTRIBUTE), min_size=1, max_size=20))
def test_distinct_events_have_distinct_keys(pairs: list[tuple[str, str]]) -> None:
    """(source, id) identifies an event: two different pairs must never share a key,
    or the second event is dropped as a duplicate of the first."""
    keys = keys_of(pa.array([s for s, _ in pairs]), pa.array([i for _, i in pairs]))
    by_key: dict[bytes, tuple[str, str]] = {}
    for pair, k in zip(pairs, keys.to_pylist(), strict=True):
        assert by_key.setdefault(k, pair) == pair, f"{pair} and {by_key[k]} share a key"
