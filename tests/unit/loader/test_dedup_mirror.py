"""The dedup index of a lake on S3 (``lake/store.py``: ``Mirrored``), with a
folder standing in for the bucket: an index written on one machine is the
index a loader on another machine restores, file for file, and what one
machine deletes leaves both copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from hourglass.lake.store import LocalStore, Mirrored, Routed
from hourglass.loader.dedup import Deduper
from hourglass.loader.staging import publish

T0 = 1_700_000_000.0


def _machine(root: Path, bucket: LocalStore) -> Deduper:
    store = Routed(bucket, Mirrored(LocalStore(root), bucket))
    return Deduper(root, "t", window_s=3600, run_keys=1024, store=store, partition=1)


def _keys(n: int, tag: bytes) -> pa.Array:
    return pa.array([tag + b"%d" % i for i in range(n)], pa.large_binary())


def test_another_machine_restores_the_index_the_checkpoint_names(tmp_path: Path) -> None:
    bucket = LocalStore(tmp_path / "bucket")
    a = _machine(tmp_path / "a", bucket)
    seen = _keys(3000, b"seen-")
    a.add(seen, now=T0)
    plan = a.plan(epoch=1, last_seq=10, now=T0, force=True)
    assert plan.run is not None
    publish(a.store, plan.staged)
    a.apply(plan, T0)
    run = plan.run[0]
    assert (tmp_path / "a" / "t" / "_dedup" / "p1" / run).exists()
    assert (tmp_path / "bucket" / "t" / "_dedup" / "p1" / run).exists(), "mirrored"

    b = _machine(tmp_path / "b", bucket)  # no local files at all
    assert b.restore(plan.state, epoch=2) == 0
    assert not b.fresh(seen).any(), "every key the other machine indexed is known"
    assert b.fresh(_keys(10, b"new-")).all()
    assert (tmp_path / "b" / "t" / "_dedup" / "p1" / run).exists(), "copied once, then mapped"


def test_a_sweep_on_one_machine_sees_what_a_crash_left_in_the_lake(tmp_path: Path) -> None:
    bucket = LocalStore(tmp_path / "bucket")
    a = _machine(tmp_path / "a", bucket)
    a.add(_keys(2000, b"k-"), now=T0)
    plan = a.plan(epoch=1, last_seq=5, now=T0, force=True)  # staged, never committed
    staged = list(plan.staged.values())
    assert staged and all(bucket.exists(k) for k in staged)
    b = _machine(tmp_path / "b", bucket)
    removed = b.restore(None, epoch=2)  # the next owner, elsewhere
    assert removed == len(staged)
    assert not any(bucket.exists(k) for k in staged), "swept from the lake's copy too"
    assert np.asarray(b.fresh(_keys(5, b"k-"))).all(), "an uncommitted run taught nothing"
