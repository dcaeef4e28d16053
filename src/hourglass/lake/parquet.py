"""Parquet files of the lake: zstd-compressed, written durably, checked by sha256.

This module knows the format, not the place: it is handed a path and writes or
reads one file there through ``hourglass.durable``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from hourglass.durable import durable_write


def write_part(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path``: temp file, fsync, rename, fsync the folder."""
    durable_write(path, lambda tmp: write_table(table, tmp))


def write_table(table: pa.Table, path: Path | BinaryIO) -> None:
    """A part file's bytes, to ``path`` (or an open file) as it is (the caller makes
    it durable).

    Dictionary encoding for every column but ``id``: an id is unique, so its
    dictionary only fills up and is dropped (measured: 0.28 → 0.16 µs per event
    for the writer, and smaller files, ``docs/performance.md``)."""
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, **writer_options(table.schema))


ROW_GROUP_ROWS = 1 << 20


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """How every lake file is written (a part file, or a merged one)."""
    return {
        "compression": "zstd",
        "write_statistics": True,
        "use_dictionary": [p for f in schema if f.name != "id" for p in leaf_paths(f)],
    }


def leaf_paths(field: pa.Field, prefix: str = "") -> list[str]:
    """The Parquet column paths under ``field`` (what ``use_dictionary`` names)."""
    name = prefix + field.name
    kind = field.type
    if pa.types.is_struct(kind):
        return [p for i in range(kind.num_fields) for p in leaf_paths(kind.field(i), name + ".")]
    if pa.types.is_map(kind):
        return [name + ".key_value.key", *leaf_paths(kind.item_field, name + ".key_value.")]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return leaf_paths(kind.value_field.with_name("element"), name + ".list.")
    return [name]


def read_columns(path: Path | BinaryIO, columns: list[str]) -> pa.Table:
    return pq.read_table(path, columns=columns)
