"""Compaction of closed buckets (``loader/compact.py``) on real files: merged files
hold exactly the rows, the manifest lists them, a second compactor or a stop
harms nothing, and a real process killed either side of the swap leaves a lake
that reads each row once and heals at the next start."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hourglass.audit import integrity
from hourglass.lake.layout import part_name
from hourglass.lake.manifest import manifest_bytes, read_manifest
from hourglass.lake.store import LocalStore
from hourglass.loader import compact, lakekeys
from hourglass.loader.compact import Stopped, compact_bucket, compact_closed, drop_staging
from tests.unit.loader.conftest import H0, SKIPPED, Harness, key, skipped

MIN = 60
TARGET = 128 << 20


def _closed_bucket(h: Harness, flushes: int = 4, per_flush: int = 50) -> list[tuple[str, str]]:
    """Bucket H0 with one part file per flush, then closed."""
    events = []
    for i in range(flushes):
        batch = [skipped() for _ in range(per_flush)]
        events += batch
        h.load(h.rows(batch, H0 + 1 + i))
    h.load(h.marker("gw", H0 + MIN))
    h.clock.now = H0 + MIN + 1
    [manifest] = h.loader.close_ready({"gw"}, caught_up=True)
    assert len(manifest.files) == flushes
    return [key(e) for e in events]


def _duck_keys(folder: Path) -> list[tuple[str, str]]:
    glob = str(folder / "part-*.parquet")
    rows = duckdb.execute("SELECT source, id FROM read_parquet($g)", {"g": glob}).fetchall()
    return sorted((str(s), str(i)) for s, i in rows)


def _assert_folder_is_its_manifest(folder: Path) -> None:
    manifest = read_manifest(folder)
    assert manifest is not None
    assert integrity(LocalStore(folder), "", manifest) == []
    for f in manifest.files:
        assert hashlib.sha256((folder / f.name).read_bytes()).hexdigest() == f.sha256


def test_a_closed_bucket_is_merged_into_one_file_with_the_same_rows(harness: Harness) -> None:
    h = harness
    keys = _closed_bucket(h)
    folder = h.folder(H0)
    parts = sorted(folder.glob("part-*.parquet"))
    before = pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("id")
    newest = max(p.stat().st_mtime_ns for p in parts)
    done: list[compact.Compacted] = []

    assert compact_closed(h.loader, TARGET, threading.Event(), done.append) == 0

    [result] = done
    assert (result.files_before, result.files_after, result.rows) == (4, 1, 200)
    [merged] = folder.glob("part-*.parquet")
    first = part_name(1, 1)[: len("part-") + 20]
    assert merged.name.startswith(first) and merged.name.endswith(f"{4:020d}.parquet")
    assert pq.read_table(merged).sort_by("id").equals(before)
    assert merged.stat().st_mtime_ns == newest  # its rows were readable since then
    assert _duck_keys(folder) == sorted(keys)
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.compacted_from == 4 and manifest.count == 200
    assert manifest.compacted_at is not None
    _assert_folder_is_its_manifest(folder)
    assert h.loader.state.compacted_before == H0 + MIN
    assert list(compact.staging_root(h.lake, SKIPPED).iterdir()) == []
    # A second round finds nothing to do.
    assert compact_closed(h.loader, TARGET, threading.Event(), done.append) == 0
    assert len(done) == 1


def test_the_target_size_bounds_each_merged_file(harness: Harness) -> None:
    h = harness
    keys = _closed_bucket(h, flushes=6)
    folder = h.folder(H0)
    sizes = [p.stat().st_size for p in sorted(folder.glob("part-*.parquet"))]
    target = 2 * max(sizes)  # any two fit, no three do
    assert 3 * min(sizes) > target
    result = compact_bucket(h.lake, SKIPPED, folder, 1, target)
    assert result is not None and (result.files_before, result.files_after) == (6, 3)
    assert _duck_keys(folder) == sorted(keys)
    _assert_folder_is_its_manifest(folder)


def test_a_schema_change_starts_a_new_file(tmp_path: Path) -> None:
    paths = []
    for i, table in enumerate(
        [
            pa.table({"id": ["a"]}),
            pa.table({"id": ["b"]}),
            pa.table({"id": ["c"], "extra": [1]}),
            pa.table({"id": ["d"]}),
        ]
    ):
        path = tmp_path / part_name(i + 1, i + 1)
        pq.write_table(table, path)
        paths.append(path)
    groups = compact.groups_of(paths, TARGET)
    assert [[p.name for p in g] for g in groups] == [
        [paths[0].name, paths[1].name],
        [paths[2].name],
        [paths[3].name],
    ]


def test_nothing_to_merge_or_not_closed_is_left_alone(harness: Harness) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1))
    h.load(h.rows([skipped()], H0 + 2))
    assert compact_bucket(h.lake, SKIPPED, h.folder(H0), 1, TARGET) is None  # not closed
    h.load(h.marker("gw", H0 + MIN))
    h.clock.now = H0 + MIN + 1
    assert len(h.loader.close_ready({"gw"}, caught_up=True)) == 1
    assert compact_bucket(h.lake, SKIPPED, h.folder(H0), 1, 1) is None  # each over target
    assert len(list(h.folder(H0).glob("part-*"))) == 2


def test_a_second_compactor_finds_the_bucket_done_and_drops_its_own_work(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fenced owner (epoch 1) has built its merge when the owner (epoch 2)
    compacts the bucket: the fenced one must not swap the old files back."""
    h = harness
    keys = _closed_bucket(h)
    folder = h.folder(H0)
    raced: list[compact.Compacted | None] = []

    def crashpoint(point: str) -> None:
        if point == "compact.staged" and not raced:
            raced.append(None)
            raced.append(compact_bucket(h.lake, SKIPPED, folder, 2, TARGET))

    monkeypatch.setattr("hourglass.loader.compact.crashpoint", crashpoint)
    assert compact_bucket(h.lake, SKIPPED, folder, 1, TARGET) is None
    assert raced[1] is not None  # the owner's merge went in
    assert _duck_keys(folder) == sorted(keys)
    _assert_folder_is_its_manifest(folder)
    assert list(compact.staging_root(h.lake, SKIPPED).iterdir()) == []


def test_a_staging_folder_cleaned_under_a_compactor_is_never_swapped_in(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer owner's recovery deletes an older epoch's staging folder while
    that compactor is between build and swap: it finds its work gone and stops."""
    h = harness
    keys = _closed_bucket(h)
    folder = h.folder(H0)

    def crashpoint(point: str) -> None:
        if point == "compact.staged":
            assert drop_staging(h.lake, SKIPPED, 2) == 1

    monkeypatch.setattr("hourglass.loader.compact.crashpoint", crashpoint)
    assert compact_bucket(h.lake, SKIPPED, folder, 1, TARGET) is None
    assert len(list(folder.glob("part-*.parquet"))) == 4  # the originals
    assert _duck_keys(folder) == sorted(keys)
    _assert_folder_is_its_manifest(folder)


def test_a_stop_abandons_the_merge_and_leaves_the_bucket(harness: Harness) -> None:
    h = harness
    keys = _closed_bucket(h)
    stop = threading.Event()
    stop.set()
    assert compact_closed(h.loader, TARGET, stop, lambda _: None) == 1  # left to do
    with pytest.raises(Stopped):
        compact_bucket(h.lake, SKIPPED, h.folder(H0), 1, TARGET, stop)
    assert len(list(h.folder(H0).glob("part-*.parquet"))) == 4
    assert _duck_keys(h.folder(H0)) == sorted(keys)
    assert list(compact.staging_root(h.lake, SKIPPED).iterdir()) == []


def test_compacted_before_is_saved_and_a_restart_starts_there(harness: Harness) -> None:
    h = harness
    _closed_bucket(h)
    compact_closed(h.loader, TARGET, threading.Event(), lambda _: None)
    h.load(h.rows([skipped()], H0 + MIN + 5))  # a flush saves the state
    assert h.state().compacted_before == H0 + MIN
    h.restart()
    assert h.loader.state.compacted_before == H0 + MIN


def test_catch_up_reads_a_merged_file_that_starts_before_the_index(tmp_path: Path) -> None:
    """A merged file's range spans many flushes: it holds events after the index's
    ``indexed_seq`` even when it starts before it, so catch-up reads it."""
    folder = tmp_path / SKIPPED / "date=2026-03-01" / "hour=10"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), folder / part_name(3, 9))
    pq.write_table(pa.table({"id": ["b"]}), folder / part_name(2, 4))
    found = lakekeys.committed_after(LocalStore(tmp_path), SKIPPED, 5, 0)
    assert [key.rsplit("/", 1)[-1] for _, key in found] == [part_name(3, 9)]


_CHILD = """
import sys
from pathlib import Path
from hourglass.loader.compact import compact_bucket
lake, folder = Path(sys.argv[1]), Path(sys.argv[2])
compact_bucket(lake, sys.argv[3], folder, 0, 128 << 20)
"""


@pytest.mark.parametrize("point", ["compact.staged", "compact.swapped"])
def test_kill_9_either_side_of_the_swap(harness: Harness, point: str) -> None:
    """A real process killed (SIGKILL, nothing cleaned up) before and after the
    swap: readers of the type's folder see every row once at that instant, and the
    next recovery drops the staging folder; compacting again finishes the job."""
    h = harness
    keys = _closed_bucket(h)
    folder = h.folder(H0)
    env = {**os.environ, "HOURGLASS_CRASHPOINT": point}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(h.lake), str(folder), SKIPPED], env=env, check=False
    )
    assert child.returncode == -9
    [staging] = compact.staging_root(h.lake, SKIPPED).iterdir()
    manifest = read_manifest(folder)
    assert manifest is not None
    if point == "compact.staged":  # the merge is staged, the bucket untouched
        assert manifest.compacted_from == 0 and len(list(folder.glob("part-*"))) == 4
        assert len(list(staging.glob("part-*"))) == 1
    else:  # swapped: the staging folder holds the old files
        assert manifest.compacted_from == 4 and len(list(folder.glob("part-*"))) == 1
        assert len(list(staging.glob("part-*"))) == 4
    assert sorted(h.keys()) == sorted(keys)  # every row once, whatever the instant
    _assert_folder_is_its_manifest(folder)

    h.restart()  # recovery drops every staging folder of its epoch or before
    assert list(compact.staging_root(h.lake, SKIPPED).iterdir()) == []
    compact_closed(h.loader, TARGET, threading.Event(), lambda _: None)
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.compacted_from == 4
    assert len(list(folder.glob("part-*"))) == 1
    assert sorted(h.keys()) == sorted(keys)
    _assert_folder_is_its_manifest(folder)


def test_status_shows_closed_buckets_waiting_for_compaction() -> None:
    from hourglass.loader.state import LoaderState
    from hourglass.status import _compaction

    states = {
        "a": LoaderState(next_close=H0 + 5 * MIN, compacted_before=H0 + 2 * MIN),
        "b": LoaderState(next_close=H0),
        "_failed": LoaderState(next_close=None),
    }
    assert _compaction(states, MIN)[1:] == [f"  {'a':<28} 3 waiting", f"  {'b':<28} not started"]


def test_merged_files_short_of_the_manifest_s_count_are_never_swapped_in(
    harness: Harness,
) -> None:
    h = harness
    _closed_bucket(h)
    folder = h.folder(H0)
    manifest = read_manifest(folder)
    assert manifest is not None
    wrong = manifest_bytes(msgspec.structs.replace(manifest, count=manifest.count + 1))
    (folder / "_SUCCESS.json").write_bytes(wrong)
    assert compact_bucket(h.lake, SKIPPED, folder, 1, TARGET) is None
    assert len(list(folder.glob("part-*.parquet"))) == 4
    assert list(compact.staging_root(h.lake, SKIPPED).iterdir()) == []


def test_status_shows_partitions_waiting_and_compaction_only_for_partition_zero() -> None:
    from hourglass.loader.state import LoaderState
    from hourglass.status import _compaction

    states = {
        "t/0": LoaderState(next_close=H0 + 5 * MIN, compacted_before=H0 + 2 * MIN),
        "t/1": LoaderState(next_close=H0 + 5 * MIN, unsealed=H0 + 3 * MIN),
    }
    assert _compaction(states, MIN)[1:] == [
        f"  {'t/0':<28} 3 waiting",
        f"  {'t/1':<28} 2 closed, waiting for other partitions",
    ]
