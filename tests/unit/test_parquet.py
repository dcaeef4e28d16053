"""Part files: dictionary encoding named by Parquet column path, for every leaf but id."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hourglass.lake.arrow import LakeSchema
from hourglass.lake.parquet import leaf_paths, write_table
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry

REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)


@pytest.mark.parametrize("schema", list(REGISTRY), ids=lambda s: s.type_name)
def test_leaf_paths_are_the_files_columns(schema: object, tmp_path: Path) -> None:
    lake = LakeSchema(schema)  # type: ignore[arg-type]
    write_table(lake.schema.empty_table(), tmp_path / "p.parquet")
    columns = pq.ParquetFile(tmp_path / "p.parquet").schema
    assert [p for f in lake.schema for p in leaf_paths(f)] == [
        columns.column(i).path for i in range(len(columns))
    ]


def test_every_leaf_but_id_is_dictionary_encoded(tmp_path: Path) -> None:
    n = 100
    table = pa.table(
        {
            "id": [str(i) for i in range(n)],
            "device": pa.array([{"platform": "IOS", "v": 1}] * n),
            "q": pa.array([["a", "b"]] * n),
            "m": pa.array([[("k", 1)]] * n, type=pa.map_(pa.string(), pa.int64())),
        }
    )
    write_table(table, tmp_path / "p.parquet")
    group = pq.ParquetFile(tmp_path / "p.parquet").metadata.row_group(0)
    encoded = {
        group.column(i).path_in_schema: "RLE_DICTIONARY" in group.column(i).encodings
        for i in range(group.num_columns)
    }
    assert encoded == {
        "id": False,
        "device.platform": True,
        "device.v": True,
        "q.list.element": True,
        "m.key_value.key": True,
        "m.key_value.value": True,
    }
