"""Staged files: what a sweep deletes and keeps, what a publish renames (real files)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from hourglass.loader.staging import epoch_of, final_of, publish, stage, staged_path, sweep


def _stage(final: Path, epoch: int, data: bytes = b"x") -> Path:
    return stage(final, epoch, lambda path: path.write_bytes(data))


def test_sweep_keeps_later_epochs_and_what_the_checkpoint_names_by_path(tmp_path: Path) -> None:
    a, b = tmp_path / "minute=01", tmp_path / "minute=02"
    named = _stage(a / "_SUCCESS.json", 3)  # the checkpoint names this one
    orphan = _stage(b / "_SUCCESS.json", 3)  # same name, another bucket: not named
    older = _stage(a / "part-1.parquet", 2)
    later = _stage(a / "part-2.parquet", 4)  # a later owner's, being written now
    legacy = a / ".tmp-part-0.parquet.partial"
    legacy.write_bytes(b"torn")
    final = a / "part-0.parquet"
    final.write_bytes(b"visible")
    assert sweep(a, 3, keep=[named]) == 2  # older, legacy
    assert sweep(b, 3, keep=[named]) == 1  # orphan
    assert sorted(p.name for p in a.iterdir()) == sorted([named.name, later.name, final.name])
    assert not orphan.exists() and not older.exists()
    assert epoch_of(later.name) == 4 and epoch_of(final.name) is None


def test_publish_renames_once_and_tolerates_what_is_gone(tmp_path: Path) -> None:
    final = tmp_path / "t" / "minute=01" / "part-1.parquet"
    temp = _stage(final, 1, b"rows")
    gone = tmp_path / "t" / "minute=09" / "part-2.parquet"  # its folder deleted since
    staged = {
        final.relative_to(tmp_path).as_posix(): temp.relative_to(tmp_path).as_posix(),
        gone.relative_to(tmp_path).as_posix(): staged_path(gone, 1)
        .relative_to(tmp_path)
        .as_posix(),
    }
    assert publish(tmp_path, staged) == 1
    assert final.read_bytes() == b"rows" and not temp.exists()
    assert publish(tmp_path, staged) == 0
    assert not gone.parent.exists(), "publish does not recreate a deleted folder"


def test_no_reader_glob_reads_a_staged_part(tmp_path: Path) -> None:
    """DuckDB's ``*`` matches a leading dot: a staged part named ``….parquet`` would
    be read by ``**/*.parquet`` (the glob docs/lake.md shows) before its flush is
    committed, and a flush that never commits would show rows twice later."""
    folder = tmp_path / "t" / "date=2026-03-01" / "hour=10"
    pq.write_table(pa.table({"a": [1]}), stage_dir(folder) / "part-1.parquet")
    stage(folder / "part-2.parquet", 1, lambda path: pq.write_table(pa.table({"a": [2]}), path))
    for glob in ("**/*.parquet", "**/part-*.parquet", "*/*/*.parquet"):
        rows = duckdb.execute(
            "SELECT a FROM read_parquet($g)", {"g": str(tmp_path / "t" / glob)}
        ).fetchall()
        assert rows == [(1,)], glob
    assert final_of(staged_path(folder / "part-2.parquet", 7).name) == "part-2.parquet"


def stage_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder
