"""Dedup keys read back from the lake: at recovery, by a standby, and for slow checks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from hourglass.lake.layout import bucket_dirs, bucket_of_dir, hour_dir
from hourglass.lake.parquet import read_columns
from hourglass.loader.dedup import Deduper, keys_of


def of_file(path: Path) -> pa.Array:
    table = read_columns(path, ["source", "id"])
    return keys_of(table.column("source"), table.column("id"))


def in_hour(lake: Path, name: str, hour: int) -> list[pa.Array]:
    """The keys of every part file of ``hour`` (epoch s) of stream ``name``."""
    folder = hour_dir(lake, name, dt.datetime.fromtimestamp(hour, dt.UTC))
    if not folder.exists():
        return []
    return [of_file(path) for path in sorted(folder.rglob("part-*.parquet"))]


def read_new(
    lake: Path, name: str, deduper: Deduper, known: set[Path], horizon: float
) -> tuple[int, set[Path]]:
    """Add to ``deduper`` the keys of part files in buckets from ``horizon`` on that
    are not in ``known``; how many files were read, and the files it holds now
    (those of buckets before the horizon drop out)."""
    seen: set[Path] = set()
    read = 0
    for folder in bucket_dirs(lake, name):
        start = bucket_of_dir(lake, name, folder).timestamp()
        if start < horizon:
            continue
        hour = int(start) - int(start) % 3600
        for path in sorted(folder.glob("part-*.parquet")):
            seen.add(path)
            if path in known:
                continue
            keys = of_file(path)
            deduper.add(keys, np.full(len(keys), hour, dtype=np.int64))
            read += 1
    return read, seen
