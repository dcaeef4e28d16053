"""``_SUCCESS.json``: the manifest that closes a bucket.

Written atomically and last, when the loader closes the bucket; from then on
the bucket's rows never change.  Its files change once: compaction swaps the
whole folder for one with the part files merged and a manifest listing them
(``loader/compact.py``), in one atomic step.  It lists every file with its row count and
sha256, so a reader (or ``hourglass audit``) can prove the folder is exactly what
the loader wrote.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from hourglass.durable import durable_write_bytes
from hourglass.lake.layout import SUCCESS, part_range
from hourglass.lake.parquet import row_count, sha256_of


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


def files_of(folder: Path) -> list[FileEntry]:
    entries = []
    if folder.exists():
        for path in sorted(folder.iterdir()):
            if part_range(path.name) is not None:
                entries.append(
                    FileEntry(path.name, row_count(path), path.stat().st_size, sha256_of(path))
                )
    return entries


def write_manifest(folder: Path, manifest: Manifest) -> None:
    durable_write_bytes(folder / SUCCESS, manifest_bytes(manifest))


def manifest_bytes(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest))


def read_manifest(folder: Path) -> Manifest | None:
    path = folder / SUCCESS
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=Manifest)
