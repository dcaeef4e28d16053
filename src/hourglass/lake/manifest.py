"""``_SUCCESS.json``: the manifest that closes a bucket.

Written atomically and last, when the loader closes the bucket; from then on
the bucket's rows never change.  Its files change once: compaction swaps the
whole folder for one with the part files merged and a manifest listing them
(``loader/compact.py``), in one atomic step.  It lists every file with its row count and
sha256, so a reader (or ``hourglass audit``) can prove the folder is exactly what
the loader wrote.

A partitioned type (``layout.py``) closes a bucket in two steps: each partition
writes its own record ``_partition-<p>.json`` (a manifest of its files alone,
``partition`` set), and whichever partition finds every record there writes
``_SUCCESS.json`` from them, once (``loader/close.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
from pathlib import Path
from typing import BinaryIO

import msgspec
import pyarrow.parquet as pq

from hourglass.durable import durable_write_bytes
from hourglass.lake.layout import SUCCESS, part_partition, part_range
from hourglass.lake.store import Store


class FileEntry(msgspec.Struct):
    name: str
    rows: int
    bytes: int
    sha256: str


class Manifest(msgspec.Struct, kw_only=True):
    type: str
    bucket_start: dt.datetime
    bucket_end: dt.datetime
    closed_at: dt.datetime
    count: int
    files: list[FileEntry]
    duplicates_dropped: int
    skewed: int
    close_delay_s: float
    version: int = 1
    # Set when the loader merged the bucket's part files (``loader/compact.py``):
    # how many there were, and when.  The rows and their count do not change.
    compacted_from: int = 0
    compacted_at: dt.datetime | None = None
    # The type's partitions, and in a partition's close record (not in
    # ``_SUCCESS.json``) the partition it is of.
    partitions: int = 1
    partition: int | None = None


def files_of(store: Store, folder: str, partition: int | None = None) -> list[FileEntry]:
    """The folder's part files (``partition``: that partition's alone), with rows
    from each footer and a checksum.  On S3 each file is downloaded for its
    checksum: a bucket's parts are read once more, at its close."""
    entries = []
    for entry in store.files(folder):
        if part_range(entry.name) is not None and (
            partition is None or part_partition(entry.name) == partition
        ):
            with store.open(posixpath.join(folder, entry.name)) as file:
                digest = sha256_of_file(file)
                file.seek(0)
                rows = pq.ParquetFile(file).metadata.num_rows
            entries.append(FileEntry(entry.name, rows, entry.size, digest))
    return entries


def sha256_of_file(file: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    durable_write_bytes(folder / SUCCESS, manifest_bytes(manifest))


def manifest_bytes(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest))


def read_manifest(folder: Path) -> Manifest | None:
    path = folder / SUCCESS
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=Manifest)
