"""Staged files: what a sweep deletes and keeps, what a publish renames (real files)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from hourglass.lake.store import LocalStore
from hourglass.loader.staging import (
    epoch_of,
    final_of,
    publish,
    stage,
    staged_key,
    sweep,
    write_bytes,
)


def _stage(store: LocalStore, final: str, epoch: int, data: bytes = b"x") -> str:
    return stage(store, final, epoch, write_bytes(data))[0]


def test_sweep_keeps_later_epochs_and_what_the_checkpoint_names_by_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    a, b = "minute=01", "minute=02"
    named = _stage(store, f"{a}/_SUCCESS.json", 3)  # the checkpoint names this one
    orphan = _stage(store, f"{b}/_SUCCESS.json", 3)  # same name, another bucket: not named
    older = _stage(store, f"{a}/part-1.parquet", 2)
    later = _stage(store, f"{a}/part-2.parquet", 4)  # a later owner's, being written now
    (tmp_path / a / ".tmp-part-0.parquet.partial").write_bytes(b"torn")  # an older temp
    (tmp_path / a / "part-0.parquet").write_bytes(b"visible")
    assert sweep(store, a, 3, keep=[named]) == 2  # older, legacy
    assert sweep(store, b, 3, keep=[named]) == 1  # orphan
    names = sorted(p.name for p in (tmp_path / a).iterdir())
    assert names == sorted([Path(named).name, Path(later).name, "part-0.parquet"])
    assert not store.exists(orphan) and not store.exists(older)
    assert epoch_of(Path(later).name) == 4 and epoch_of("part-0.parquet") is None


def test_publish_renames_once_and_tolerates_what_is_gone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    final = "t/minute=01/part-1.parquet"
    temp = _stage(store, final, 1, b"rows")
    gone = "t/minute=09/part-2.parquet"  # its folder deleted since
    staged = {final: temp, gone: staged_key(gone, 1)}
    assert publish(store, staged) == 1
    assert store.read(final) == b"rows" and not store.exists(temp)
    assert publish(store, staged) == 0
    assert not (tmp_path / "t" / "minute=09").exists(), "publish does not recreate a folder"


def test_no_reader_glob_reads_a_staged_part(tmp_path: Path) -> None:
    """DuckDB's ``*`` matches a leading dot: a staged part named ``….parquet`` would
    be read by ``**/*.parquet`` (the glob docs/lake.md shows) before its flush is
    committed, and a flush that never commits would show rows twice later."""
    store = LocalStore(tmp_path)
    folder = tmp_path / "t" / "date=2026-03-01" / "hour=10"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), folder / "part-1.parquet")
    key = "t/date=2026-03-01/hour=10/part-2.parquet"
    stage(store, key, 1, lambda file: pq.write_table(pa.table({"a": [2]}), file))
    for glob in ("**/*.parquet", "**/part-*.parquet", "*/*/*.parquet"):
        rows = duckdb.execute(
            "SELECT a FROM read_parquet($g)", {"g": str(tmp_path / "t" / glob)}
        ).fetchall()
        assert rows == [(1,)], glob
    assert final_of(Path(staged_key(key, 7)).name) == "part-2.parquet"
