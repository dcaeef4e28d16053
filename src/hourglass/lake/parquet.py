"""Parquet files of the lake: zstd-compressed, written durably, checked by sha256.

This module knows the format, not the place: it is handed a path and writes or
reads one file there through ``hourglass.durable``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hourglass.durable import durable_write


def write_part(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path``: temp file, fsync, rename, fsync the folder."""
    durable_write(path, lambda tmp: write_table(table, tmp))


def write_table(table: pa.Table, path: Path) -> None:
    """A part file's bytes, to ``path`` as it is (the caller makes it durable)."""
    pq.write_table(table, path, compression="zstd", row_group_size=1 << 20, write_statistics=True)


def row_count(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    return pq.read_table(path, columns=columns)
