"""LocalStore on real files: a listing of a bucket folder that other loaders are
renaming in (the partitions of one type share it) still shows this loader's
files.  (The bug this guards: one file renamed between the listing and its stat
emptied the whole listing, and a partition closed a bucket with no files.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hourglass.lake.store import LocalStore


def test_a_listing_keeps_its_own_files_while_others_rename_beside_them(tmp_path: Path) -> None:
    folder = tmp_path / "t" / "date=2026-03-01" / "hour=10"
    folder.mkdir(parents=True)
    (folder / "part-p1-1-2.parquet").write_bytes(b"mine")
    stop = threading.Event()

    def churn() -> None:  # another partition's loader: stage, publish, again
        i = 0
        while not stop.is_set():
            staged, final = folder / f".tmp-e1-part-p0-{i}.staged", folder / f"part-p0-{i}.parquet"
            staged.write_bytes(b"x")
            os.replace(staged, final)
            final.unlink()
            i += 1

    other = threading.Thread(target=churn)
    other.start()
    store = LocalStore(tmp_path)
    try:
        for _ in range(3000):
            names = {e.name for e in store.files("t/date=2026-03-01/hour=10")}
            assert "part-p1-1-2.parquet" in names
    finally:
        stop.set()
        other.join()
    assert store.files("t/nothing") == []
