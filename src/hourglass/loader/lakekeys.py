"""Dedup keys read back from the lake's part files, for a recovering loader."""

from __future__ import annotations

import pyarrow as pa

from hourglass.lake.layout import bucket_keys, bucket_of_key, part_partition, part_range
from hourglass.lake.parquet import read_columns
from hourglass.lake.store import Store
from hourglass.loader.keys import keys_of


def of_file(store: Store, key: str) -> pa.Array:
    with store.open(key) as file:
        table = read_columns(file, ["source", "id"])
    return keys_of(table.column("source"), table.column("id"))


def committed_after(
    store: Store, name: str, seq: int, horizon: float, partition: int | None = None
) -> list[tuple[int, str]]:
    """Part files of stream ``name`` (of its ``partition``, whose sequences they
    carry) with events after ``seq``, in buckets from ``horizon`` (epoch s) on, by
    range: (last seq of its range, path).

    A flush's part files cover its own range, so for them "ends after ``seq``" is
    "starts after it"; a merged file (``compact.py``) covers many flushes and
    may start before ``seq`` yet hold events after it: it is read whole."""
    found: list[tuple[int, int, str]] = []
    for folder in bucket_keys(store, name, int(horizon) if horizon > 0 else None):
        if bucket_of_key(name, folder).timestamp() < horizon:
            continue
        for entry in store.files(folder):
            span = part_range(entry.name)
            if span is not None and span[1] > seq and part_partition(entry.name) == partition:
                found.append((span[0], span[1], f"{folder}/{entry.name}"))
    found.sort()
    return [(last, key) for _, last, key in found]
