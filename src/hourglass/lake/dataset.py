"""The lake as Arrow datasets, read where it is: a folder, or S3.

Readers need no conditional writes, so on S3 they use pyarrow's own S3 file
system (range reads of footers and columns, not whole objects), with the same
credentials as the loader (``lake/s3.py``).  DuckDB queries these datasets
directly (``hourglass query``, ``hourglass audit``), so nothing here needs
DuckDB's httpfs extension, which an offline machine cannot install.

Only committed files are read: part files of the type's bucket folders, found by
listing (``layout.bucket_keys``), never a glob that a staged or compaction file
could match.  The hive columns (``date``, ``hour``, ``minute``) are typed as
DuckDB types them when it reads the same folders (date, and integers).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hourglass.config import Settings
from hourglass.lake.layout import bucket_keys, part_range
from hourglass.lake.store import Store

__all__ = ["arrow_filesystem", "part_keys", "type_dataset"]

HIVE = pa.schema([("date", pa.date32()), ("hour", pa.int64()), ("minute", pa.int64())])


def arrow_filesystem(settings: Settings) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system for the lake, and the lake root's path in it."""
    if not settings.lake_remote:
        return pafs.LocalFileSystem(), str(settings.lake_path)
    from hourglass.lake.s3 import credentials  # the s3 extra's

    found = credentials()
    options: dict[str, object] = {
        "region": found.get("region", "us-east-1"),
        "access_key": found.get("aws_access_key_id"),
        "secret_key": found.get("aws_secret_access_key"),
        "session_token": found.get("aws_session_token"),
    }
    endpoint = settings.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint)
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
    s3 = pafs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})
    return s3, settings.lake_url.removeprefix("s3://").rstrip("/")


def part_keys(store: Store, type_name: str) -> list[str]:
    """Every committed part file of a type, by bucket folder and name."""
    return [
        f"{folder}/{entry.name}"
        for folder in bucket_keys(store, type_name)
        for entry in store.files(folder)
        if part_range(entry.name) is not None
    ]


def type_dataset(
    settings: Settings, store: Store, type_name: str, keys: list[str] | None = None
) -> ds.Dataset | None:
    """A type's rows (``keys``: those part files only) as one dataset, its schema
    the union of its files' (a schema change adds columns), None if it has none."""
    keys = part_keys(store, type_name) if keys is None else keys
    if not keys:
        return None
    fs, root = arrow_filesystem(settings)
    paths = [f"{root}/{key}" for key in keys]
    schemas = [pq.read_schema(path, filesystem=fs) for path in paths]
    levels = paths[0].removeprefix(f"{root}/{type_name}/").count("/")
    hive = pa.schema(list(HIVE)[:levels])
    return ds.dataset(
        paths,
        filesystem=fs,
        format="parquet",
        schema=pa.unify_schemas([*schemas, hive], promote_options="permissive"),
        partitioning=ds.partitioning(hive, flavor="hive"),
        partition_base_dir=f"{root}/{type_name}",
    )
