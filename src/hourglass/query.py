"""``hourglass query``: DuckDB over the lake, with one view per event type.

Views are named after the type (``"music.SongSkipped"``, quoted because of the
dot) plus ``_failed``; each reads ``<lake>/<type>/**/*.parquet`` as a
hive-partitioned dataset, exactly as any other reader would.  A lake on S3 is
read through pyarrow's S3 file system (``lake/dataset.py``): each view is the
type's committed part files, found by listing.
"""

from __future__ import annotations

from typing import Any

import duckdb

from hourglass.config import Settings
from hourglass.exceptions import ConfigError
from hourglass.lake.dataset import type_dataset
from hourglass.lake.failed import FAILED_DIR
from hourglass.lake.layout import COMPACTING
from hourglass.lake.store import lake_store


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    if settings.lake_remote:
        return _connect_remote(settings)
    lake = settings.lake_path
    con = duckdb.connect()
    if lake.exists():
        for folder in sorted(p for p in lake.iterdir() if p.is_dir() and p.name != COMPACTING):
            if any(folder.rglob("*.parquet")):
                pattern = str(folder / "**" / "*.parquet").replace("'", "''")
                name = folder.name.replace('"', '""')
                con.execute(
                    f'create view "{name}" as select * from read_parquet('  # noqa: S608
                    f"'{pattern}', hive_partitioning=true, union_by_name=true)"
                )
    return con


def _connect_remote(settings: Settings) -> duckdb.DuckDBPyConnection:
    store = lake_store(settings)
    con = duckdb.connect()
    for name in store.folders(""):
        rows = (
            None
            if name.startswith("_") and name != FAILED_DIR
            else type_dataset(settings, store, name)
        )
        if rows is not None:
            con.register(name, rows)
    return con


def run_query(settings: Settings, sql: str) -> Any:
    con = connect(settings)
    try:
        return con.sql(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {exc}") from exc
