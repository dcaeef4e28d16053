"""Dedup keys read back from the lake's part files, for a recovering loader."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from hourglass.lake.layout import bucket_dirs, bucket_of_dir, part_partition, part_range
from hourglass.lake.parquet import read_columns
from hourglass.loader.keys import keys_of


def of_file(path: Path) -> pa.Array:
    table = read_columns(path, ["source", "id"])
    return keys_of(table.column("source"), table.column("id"))


def committed_after(
    lake: Path, name: str, seq: int, horizon: float, partition: int | None = None
) -> list[tuple[int, Path]]:
    """Part files of stream ``name`` (of its ``partition``, whose sequences they
    carry) with events after ``seq``, in buckets from ``horizon`` (epoch s) on, by
    range: (last seq of its range, path).

    A flush's part files cover its own range, so for them "ends after ``seq``" is
    "starts after it"; a merged file (``compact.py``) covers many flushes and
    may start before ``seq`` yet hold events after it: it is read whole."""
    found: list[tuple[int, int, Path]] = []
    for folder in bucket_dirs(lake, name):
        if bucket_of_dir(lake, name, folder).timestamp() < horizon:
            continue
        for path in folder.glob("part-*.parquet"):
            span = part_range(path.name)
            if span is not None and span[1] > seq and part_partition(path.name) == partition:
                found.append((span[0], span[1], path))
    found.sort()
    return [(last, path) for _, last, path in found]
