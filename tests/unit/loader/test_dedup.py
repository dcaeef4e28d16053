"""The Deduper against a Python set model; ``keys_of``, ``hash64`` and the hash index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.loader import dedup
from hourglass.loader.dedup import Deduper, hash64, keys_of
from hourglass.loader.hashindex import HashIndex, nonzero

HOUR = 3600


class Store:
    """KeySource: the keys stored per hour, as the lake would hold them."""

    def __init__(self) -> None:
        self.by_hour: dict[int, list[bytes]] = {}
        self.queries = 0

    def keys_in_hour(self, hour: int) -> pa.Array:
        self.queries += 1
        return pa.array(self.by_hour.get(hour, []), pa.large_binary())


def _run_model(
    batches: list[list[tuple[bytes, int]]],
    window_s: int = 10 * HOUR,
    memory_bytes: int = 1 << 20,
    now: int | None = None,
) -> Store:
    """Feed batches of (key, hour index); check every keep mask against a set model."""
    store = Store()
    deduper = Deduper(store, window_s=window_s, memory_bytes=memory_bytes)
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
        if now is not None:
            assert deduper.expire(now) == []
    return store


_keys = st.binary(min_size=1, max_size=6)  # short keys: many collisions of bytes
_batches = st.lists(st.lists(st.tuples(_keys, st.integers(0, 3)), max_size=40), max_size=8)


@settings(max_examples=150, deadline=None)
@given(_batches)
def test_fresh_matches_a_set_model(batches: list[list[tuple[bytes, int]]]) -> None:
    _run_model(batches)


def _weak_hash(keys: pa.Array) -> np.ndarray:
    """A terrible hash (the key's length, 1..3): nearly every key collides."""
    lengths = pc.binary_length(keys).to_numpy(zero_copy_only=False).astype(np.uint64)
    return lengths % np.uint64(3) + np.uint64(1)


@settings(max_examples=100, deadline=None)
@given(_batches)
def test_hash_collisions_never_drop_a_new_key(
    batches: list[list[tuple[bytes, int]]],
) -> None:
    """With a hash that collides for most keys, only byte comparisons decide."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dedup, "hash64", _weak_hash)
        _run_model(batches)


@settings(max_examples=100, deadline=None)
@given(_batches)
def test_keys_out_of_memory_are_checked_in_the_store(
    batches: list[list[tuple[bytes, int]]],
) -> None:
    """No chunk kept in memory: every suspect is settled by the KeySource."""
    _run_model(batches, memory_bytes=0)


@settings(max_examples=100, deadline=None)
@given(_batches, st.integers(2, 6))
def test_sealed_hours_still_find_every_key(
    batches: list[list[tuple[bytes, int]]], now_h: int
) -> None:
    """Hours sealed (hashes only) between batches, and keys added to them after."""
    _run_model(batches, now=now_h * HOUR)


def test_sealing_keeps_hashes_only() -> None:
    store = Store()
    deduper = Deduper(store, window_s=10 * HOUR)
    keys = pa.array([b"%d:k" % i for i in range(1000)], pa.large_binary())
    deduper.add(keys, np.zeros(len(keys), dtype=np.int64))
    store.by_hour[0] = keys.to_pylist()
    before = deduper.nbytes
    deduper.expire(2 * HOUR)
    assert deduper.nbytes <= 8 * len(keys) < before
    assert not deduper.fresh(keys.slice(0, 10)).any()
    assert store.queries == 1  # settled from the store: the bytes are gone
    deduper.add(pa.array([b"new"], pa.large_binary()), np.zeros(1, dtype=np.int64))
    store.by_hour[0].append(b"new")
    assert not deduper.fresh(keys.slice(990, 10)).any()
    assert deduper.fresh(pa.array([b"other"], pa.large_binary())).tolist() == [True]


def test_collisions_and_evictions_are_resolved_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many keys, a weak hash and a small memory: the slow path runs, no key is lost."""
    monkeypatch.setattr(dedup, "hash64", _weak_hash)
    rng = np.random.default_rng(7)
    batches = [
        [
            (b"k%d" % i, int(h))
            for i, h in zip(range(n, n + 500), rng.integers(0, 3, 500), strict=True)
        ]
        for n in range(0, 5000, 500)
    ]
    store = _run_model(batches, memory_bytes=20_000)
    assert store.queries > 5, "the exact check against the store was not exercised"
    # And every key of the last batches is then correctly a duplicate.
    _run_model(batches + batches[-2:], memory_bytes=20_000)


def test_recent_duplicates_need_no_store_lookup() -> None:
    """The common case: a re-send of keys still in memory is settled in memory."""
    store = Store()
    deduper = Deduper(store, window_s=2 * HOUR)
    keys = pa.array([b"%d:src:%d" % (i, i) for i in range(10_000)], pa.large_binary())
    hours = np.zeros(len(keys), dtype=np.int64)
    assert deduper.fresh(keys).all()
    deduper.add(keys, hours)
    again = pa.concat_arrays([keys.slice(100, 50), pa.array([b"new"], pa.large_binary())])
    assert deduper.fresh(again).tolist() == [False] * 50 + [True]
    assert store.queries == 0 and deduper.slow_checks == 0


def test_the_index_grows_and_finds_every_key() -> None:
    index = HashIndex()
    rng = np.random.default_rng(3)
    hashes = nonzero(rng.integers(0, 2**63, 100_000, dtype=np.uint64))
    for part in np.array_split(np.arange(len(hashes)), 7):
        index.insert(hashes[part], part.astype(np.uint64))
    slots = index.find(hashes)
    assert (slots >= 0).all()
    assert (index.refs(slots) == np.arange(len(hashes), dtype=np.uint64)).all()
    others = nonzero(rng.integers(2**63, 2**64 - 1, 1000, dtype=np.uint64))
    assert (index.find(others) == -1).all()
    assert index.count == len(hashes) and index.nbytes <= 16 * 4 * len(hashes)


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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30), st.data())
def test_hash64_is_a_function_of_the_key_bytes_only(keys: list[bytes], data: st.DataObject) -> None:
    array = pa.array(keys, pa.large_binary())
    h = hash64(array)
    assert h.dtype == np.uint64 and (h != 0).all()
    by_key: dict[bytes, int] = {}
    for k, v in zip(keys, h.tolist(), strict=True):
        assert by_key.setdefault(k, v) == v
    # Wherever the key sits: a slice (non-zero offset), another batch, a concatenation.
    start = data.draw(st.integers(0, len(keys) - 1))
    stop = data.draw(st.integers(start + 1, len(keys)))
    assert hash64(array.slice(start, stop - start)).tolist() == h[start:stop].tolist()
    joined = pa.concat_arrays([pa.array([b"prefix"], pa.large_binary()), array])
    assert hash64(joined)[1:].tolist() == h.tolist()


def test_hash64_of_no_keys() -> None:
    assert len(hash64(pa.array([], pa.large_binary()))) == 0


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
    assert hash64(keys).tolist() == hash64(pa.array(keys.to_pylist(), pa.large_binary())).tolist()


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
