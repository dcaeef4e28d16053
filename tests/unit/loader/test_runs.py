"""Run files: sorted keys with their bytes, exact lookups, refused when damaged."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hourglass.loader.runs import PAGE, Run, RunError, write_run


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.binary(min_size=0, max_size=12), unique=True, max_size=60),
    st.lists(st.binary(min_size=0, max_size=12), max_size=30),
    st.integers(1, 4),
    st.integers(0, 5),
    st.booleans(),
)
def test_a_run_holds_exactly_its_keys_whatever_the_collisions(
    tmp_path_factory: pytest.TempPathFactory,
    stored: list[bytes],
    asked: list[bytes],
    spread: int,
    cut: int,
    wide: bool,
) -> None:
    path = tmp_path_factory.mktemp("run") / "r.hgr"
    # Many keys per hash; ``wide``: hashes that differ only in their top bits.
    hash_of = {k: (len(k) % spread + 1) << (60 if wide else 0) for k in stored + asked}
    keys = pa.array([b"pad"] + stored, pa.large_binary()).slice(1)  # a non-zero offset
    chunks = [keys.slice(0, min(cut, len(keys))), keys.slice(min(cut, len(keys)))]
    hashes = np.array([hash_of[k] for k in stored], dtype=np.uint64)
    size, ordered = write_run(path, chunks, hashes, 42)
    assert path.stat().st_size == size
    assert sorted(ordered.tolist()) == sorted(hashes.tolist())
    run = Run(path, 42)
    query = asked + stored
    found = run.holds(
        pa.array(query, pa.large_binary()), np.array([hash_of[k] for k in query], dtype=np.uint64)
    )
    assert found.tolist() == [k in set(stored) for k in query]
    run.forget_pages()


def test_a_truncated_run_or_one_of_another_hash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.hgr"
    write_run(path, [pa.array([b"a", b"bc"], pa.large_binary())], np.array([5, 3], np.uint64), 1)
    with pytest.raises(RunError, match="another key hash"):
        Run(path, 2)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(RunError, match="not a whole run"):
        Run(path, 1)
    path.write_bytes(b"short")
    with pytest.raises(RunError, match="shorter"):
        Run(path, 1)


@pytest.mark.parametrize("kind", ["random", "few hashes", "few prefixes"])
def test_lookups_across_fence_blocks_find_exactly_the_stored_keys(
    tmp_path: Path, kind: str
) -> None:
    """Thousands of keys (several PAGE blocks): hashes spread, or shared by long runs
    of keys (groups that span blocks), or differing only below the prefix."""
    rng = np.random.default_rng(3)
    stored = [b"s%d" % i for i in range(3 * PAGE + 17)]
    asked = [b"n%d" % i for i in range(500)] + stored[::7]
    everything = stored + asked
    if kind == "random":
        hash_of = dict(
            zip(
                everything,
                rng.integers(1, 2**64 - 1, len(everything), dtype=np.uint64).tolist(),
                strict=True,
            )
        )
    elif kind == "few hashes":
        hash_of = {k: (len(k) % 3 + 1) << 40 for k in everything}
    else:  # the same top bits, other low bits: one prefix group for all
        hash_of = {k: (7 << 50) | (zlib.crc32(k) & 0xFFF) for k in everything}
    path = tmp_path / "r.hgr"
    keys = pa.array(stored, pa.large_binary())
    write_run(path, [keys], np.array([hash_of[k] for k in stored], dtype=np.uint64), 9)
    run = Run(path, 9)
    found = run.holds(
        pa.array(asked, pa.large_binary()), np.array([hash_of[k] for k in asked], dtype=np.uint64)
    )
    assert found.tolist() == [k in set(stored) for k in asked]
