"""The slice filter: never a false "no", few false "maybe"s, columns apart."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.loader.filter import SliceFilter
from hourglass.loader.runs import sort_hashes

_HASHES = st.lists(st.integers(1, 2**64 - 1), max_size=300)


@settings(max_examples=100, deadline=None)
@given(st.lists(_HASHES, min_size=1, max_size=4), _HASHES)
def test_every_key_added_to_a_slice_is_reported_for_it(
    slices: list[list[int]], others: list[int]
) -> None:
    f = SliceFilter(1 << 12, len(slices))
    for column, hashes in enumerate(slices):
        f.add(column, np.array(hashes, dtype=np.uint64))
    for column, hashes in enumerate(slices):
        if not hashes:
            continue
        rows, match = f.candidates(np.array(hashes, dtype=np.uint64))
        assert rows.tolist() == list(range(len(hashes)))
        assert match[:, column].all()
    rows, match = f.candidates(np.array(others, dtype=np.uint64))
    assert len(rows) == len(match) <= len(others)


def test_false_positives_at_capacity_are_rare_and_a_cleared_column_holds_nothing() -> None:
    rng = np.random.default_rng(7)
    f = SliceFilter(8 << 20, 4)
    for column in range(4):
        f.add(column, rng.integers(1, 2**63, f.capacity, dtype=np.uint64))
    probes = rng.integers(2**63, 2**64 - 1, 200_000, dtype=np.uint64)
    rows, match = f.candidates(probes)
    per_slice = match.sum() / len(probes) / 4
    assert per_slice < 0.006, f"false positive rate {per_slice:.4f} per slice"
    f.clear(2)
    rows, match = f.candidates(probes)
    assert not match[:, 2].any()


def test_a_saved_column_loads_back_and_a_wrong_size_is_refused() -> None:
    f = SliceFilter(1 << 14, 2)
    hashes = np.arange(1, 500, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    f.add(1, hashes)
    g = SliceFilter(1 << 14, 2)
    g.load_column(1, f.column(1))
    assert (g.words == f.words).all()
    try:
        SliceFilter(1 << 15, 2).load_column(0, f.column(1))
    except ValueError as exc:
        assert "blocks" in str(exc)
    else:
        raise AssertionError("a column of another size was loaded")


def test_hashes_in_a_run_s_order_fill_the_same_column_as_in_any_order() -> None:
    rng = np.random.default_rng(11)
    hashes = rng.integers(1, 2**64 - 1, 50_000, dtype=np.uint64)
    a, b = SliceFilter(1 << 16, 2), SliceFilter(1 << 16, 2)
    a.add(0, hashes)
    b.add(0, sort_hashes(hashes)[0], in_order=True)
    assert (a.words == b.words).all()


def test_a_loaded_column_cleared_holds_nothing_and_a_clean_one_clears_alone() -> None:
    f = SliceFilter(1 << 14, 3)
    hashes = np.arange(1, 500, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    f.add(0, hashes)
    g = SliceFilter(1 << 14, 3)
    g.load_column(1, f.column(0))
    g.clear(1)
    g.clear(2)  # never written: skipped, and column 0 of f is untouched by g
    assert not g.words.any()
    f.clear(1)
    f.clear(1)
    assert (f.candidates(hashes)[1][:, 0]).all()
    f.clear(0)
    f.add(0, hashes[:10])
    f.clear(0)
    assert not f.words.any()
