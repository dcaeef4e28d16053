"""The Deduper against a set model (Hypothesis), with real run files in a temp
folder, crashes at every step of a flush, a deliberately terrible hash and tiny
budgets; ``keys_of``, ``hash64`` and the hash index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hourglass.lake.store import LocalStore
from hourglass.loader.dedup import Deduper
from hourglass.loader.hashindex import HashIndex, nonzero
from hourglass.loader.keys import HashFn, hash64, keys_of
from hourglass.loader.staging import publish
from hourglass.loader.state import DedupState

HOUR = 3600
T0 = 1_700_000_000.0


def terrible_hash(keys: pa.Array) -> np.ndarray:
    """Three values for every key there is: nearly every lookup is a collision."""
    lengths = pc.binary_length(keys).to_numpy(zero_copy_only=False)
    return (lengths % 3 + 1).astype(np.uint64)


class Sim:
    """A stream's loader reduced to its dedup steps, against a model of the lake.

    ``committed``: key → commit time of every key the lake holds; ``pending``:
    keys processed, not flushed.  A crash keeps only what a checkpoint saved.
    """

    def __init__(self, lake: Path, hash_fn: HashFn, **budget: int) -> None:
        self.lake, self.hash_fn, self.budget = lake, hash_fn, budget
        self.window = budget["window_s"]
        self.now = T0
        self.seq = 0
        self.saved: DedupState | None = None
        self.saved_staged: dict[str, str] = {}
        self.parts: list[tuple[int, list[bytes]]] = []  # committed flushes: seq, keys
        self.committed: dict[bytes, float] = {}
        self.pending: list[bytes] = []
        self.dropped_late = 0  # re-sends let through because they were beyond the window
        self.d = self._start()

    def _start(self) -> Deduper:
        d = Deduper(self.lake, "t", hash_fn=self.hash_fn, **self.budget)
        d.restore(self.saved, epoch=0)
        for seq, keys in self.parts:
            if seq > d.state.indexed_seq:
                d.add(pa.array(keys, pa.large_binary()), now=self.now)
        return d

    def batch(self, keys: list[bytes]) -> None:
        array = pa.array(keys, pa.large_binary())
        keep = self.d.fresh(array).tolist()
        floor = max(self.now - self.window, self.d.state.evicted_until)
        seen = set(self.pending)
        for key, kept in zip(keys, keep, strict=True):
            if key in seen:
                assert not kept, f"{key!r} kept twice (pending or earlier in the batch)"
            elif key not in self.committed:
                assert kept, f"{key!r} dropped, but the lake does not hold it"
            elif self.committed[key] > floor:
                assert not kept, f"{key!r} kept, but it was committed within the window"
            elif kept:
                self.dropped_late += 1
            seen.add(key)
        new = [k for k, kept in zip(keys, keep, strict=True) if kept]
        self.d.add(pa.array(new, pa.large_binary()), now=self.now)
        self.pending += new

    def flush(self, crash: str | None = None) -> None:
        """One flush; ``crash``: stop after staging ("staged") or after the save
        ("saved"), before the files are published."""
        seq = self.seq + 1
        plan = self.d.plan(0, seq, self.now)
        if crash == "staged":
            return self.crash()
        self.seq = seq
        self.saved, self.saved_staged = plan.state, plan.staged
        self.parts.append((seq, self.pending))
        for key in self.pending:
            self.committed[key] = self.now
        self.pending = []
        if crash == "saved":
            return self.crash()
        publish(LocalStore(self.lake), plan.staged)
        self.d.apply(plan, self.now)
        return None

    def crash(self) -> None:
        self.pending = []
        publish(LocalStore(self.lake), self.saved_staged)  # what recovery does first
        self.d = self._start()


_KEYS = st.binary(min_size=1, max_size=6)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.lists(_KEYS, max_size=40)),
        st.tuples(st.just("flush"), st.sampled_from([None, None, None, "staged", "saved"])),
        st.tuples(st.just("tick"), st.floats(1, 2 * HOUR)),
        st.tuples(st.just("crash"), st.none()),
    ),
    max_size=60,
)


def _play(sim: Sim, ops: list[tuple[str, object]]) -> Sim:
    for op, arg in ops:
        if op == "batch":
            assert isinstance(arg, list)
            sim.batch(arg)
        elif op == "flush":
            sim.flush(arg if isinstance(arg, str) else None)
        elif op == "tick":
            assert isinstance(arg, float)
            sim.now += arg
        else:
            sim.crash()
    for s in sim.d.state.slices:  # what the state names is on disk, and nothing else
        for ref in s.runs:
            assert (sim.d.folder / ref.name).stat().st_size == ref.nbytes
    return sim


_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(_OPS)
def test_the_index_matches_a_set_model_across_crashes(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    lake = tmp_path_factory.mktemp("lake")
    _play(Sim(lake, hash64, window_s=4 * HOUR, memory_bytes=1 << 16, run_keys=5, slices=4), ops)


@_SETTINGS
@given(_OPS)
def test_a_terrible_hash_never_drops_a_new_key(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    lake = tmp_path_factory.mktemp("lake")
    _play(
        Sim(lake, terrible_hash, window_s=4 * HOUR, memory_bytes=1 << 16, run_keys=3, slices=3), ops
    )


@_SETTINGS
@given(_OPS)
def test_tiny_budgets_shorten_the_window_and_drop_nothing_new(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    lake = tmp_path_factory.mktemp("lake")
    sim = Sim(
        lake, hash64, window_s=4 * HOUR, memory_bytes=1 << 12, run_keys=2, slices=2, disk_bytes=300
    )
    _play(sim, ops)
    assert sim.d.disk_used <= 300 or len(sim.d.state.slices) == 1


def test_a_resend_within_the_window_is_dropped_one_beyond_it_is_kept(tmp_path: Path) -> None:
    sim = Sim(tmp_path, hash64, window_s=6 * HOUR, memory_bytes=1 << 16, run_keys=2, slices=7)
    sim.batch([b"early", b"a", b"b"])
    sim.flush()
    sim.now += 5 * HOUR  # hours later: in a run of an older slice, not in memory
    sim.batch([b"x", b"y"])
    sim.flush()
    assert sim.d.memtable.count == 0 and len(sim.d.state.slices) >= 2
    sim.crash()  # and after a restart, read from the run files
    assert sim.d.fresh(pa.array([b"early", b"new"], pa.large_binary())).tolist() == [False, True]
    sim.now += 2 * HOUR  # "early" was committed 7 h ago: beyond the window
    sim.batch([b"z"])
    sim.flush()
    assert sim.d.fresh(pa.array([b"early", b"x"], pa.large_binary())).tolist() == [True, False]
    assert sim.d.effective_window_s(sim.now) == 6 * HOUR


def test_a_full_disk_budget_is_reported_as_a_shorter_effective_window(tmp_path: Path) -> None:
    sim = Sim(tmp_path, hash64, window_s=24 * HOUR, run_keys=2, slices=4, disk_bytes=200)
    for i in range(12):  # a run of ~74 bytes an hour, a slice every 8 hours
        sim.batch([b"k%d" % i, b"l%d" % i])
        sim.flush()
        sim.now += HOUR
    assert sim.d.disk_used <= 200 or len(sim.d.state.slices) == 1
    assert 0 < sim.d.effective_window_s(sim.now) < 24 * HOUR
    assert sim.d.fresh(pa.array([b"k11", b"k0"], pa.large_binary())).tolist() == [False, True]


def test_full_filter_columns_are_reported_as_a_shorter_effective_window(tmp_path: Path) -> None:
    # 2 columns of 192 blocks: a slice holds 768 keys, then the next one starts.
    sim = Sim(tmp_path, hash64, window_s=24 * HOUR, memory_bytes=1 << 12, run_keys=200, slices=2)
    assert sim.d.filter.capacity == 768
    for i in range(12):
        sim.batch([b"%d-%d" % (i, j) for j in range(200)])
        sim.flush()
        sim.now += 60
    assert len(sim.d.state.slices) == 2 and sim.d.state.evicted_until > 0
    assert sim.d.effective_window_s(sim.now) < 12 * 60
    assert not sim.d.fresh(pa.array([b"11-5"], pa.large_binary())).any()


def test_a_run_written_with_another_hash_is_not_used(tmp_path: Path) -> None:
    sim = Sim(tmp_path, hash64, window_s=HOUR, memory_bytes=1 << 16, run_keys=1, slices=2)
    sim.batch([b"a"])
    sim.flush()
    sim.hash_fn = terrible_hash  # an upgrade changed the hash function
    sim.crash()
    assert sim.d.state.slices == [] and sim.d.effective_window_s(sim.now) < HOUR
    assert sim.d.fresh(pa.array([b"b"], pa.large_binary())).tolist() == [True]


def test_recovery_deletes_files_no_checkpoint_names_of_its_epoch_only(tmp_path: Path) -> None:
    sim = Sim(tmp_path, hash64, window_s=HOUR, memory_bytes=1 << 16, run_keys=1, slices=2)
    sim.batch([b"a"])
    sim.flush(crash="staged")  # a staged run no checkpoint names
    folder = sim.d.folder
    later = folder / "run-e7-00000000000000000001-00000000000000000001.hgr"
    later.write_bytes(b"a later owner's")
    mine = folder / "run-e0-00000000000000000009-00000000000000000009.hgr"
    mine.write_bytes(b"an expired run")
    d = Deduper(tmp_path, "t", window_s=HOUR, memory_bytes=1 << 16)
    assert d.restore(None, epoch=3) == 1
    assert later.exists() and not mine.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


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


def test_a_run_staged_by_a_fenced_owner_is_deleted_at_the_next_run(tmp_path: Path) -> None:
    sim = Sim(tmp_path, hash64, window_s=HOUR, memory_bytes=1 << 16, run_keys=1, slices=2)
    sim.batch([b"a"])
    sim.flush()
    fenced = sim.d.folder / ".tmp-e0-run-00000000000000000005-00000000000000000005.hgr"
    fenced.write_bytes(b"staged by an owner fenced after our recovery")
    later = sim.d.folder / ".tmp-e9-run-00000000000000000007-00000000000000000007.hgr"
    later.write_bytes(b"a later owner's")
    sim.batch([b"b"])
    seq = sim.seq + 1
    plan = sim.d.plan(epoch=1, last_seq=seq, now=sim.now)
    publish(LocalStore(tmp_path), plan.staged)
    sim.d.apply(plan, sim.now)
    assert not fenced.exists() and later.exists()
