"""Checks that lake values and types are what the Avro schema says (no src mapping reused).

``same_value`` compares a value read back (pyarrow's or DuckDB's Python value) with
the JSON that was sent; ``check_arrow_type`` and ``duckdb_type`` give the column
type each Avro node must have.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import numpy as np
import pyarrow as pa

from hourglass.schemas.parse import NO_DEFAULT, Array, Enum, Map, Node, Nullable, Primitive, Record

TS = {"timestamp-millis": dt.timedelta(milliseconds=1), "timestamp-micros": dt.timedelta(0)}


def parse_ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def same_value(node: Node, sent: Any, got: Any, where: str) -> None:
    """``got`` (pyarrow's Python value) is what the schema says ``sent`` (JSON) means."""
    if isinstance(node, Nullable):
        if sent is None:
            assert got is None, where
            return
        node = node.inner
    if isinstance(node, Record):
        for f in node.fields:
            value = sent.get(f.name, f.default) if f.default is not NO_DEFAULT else sent[f.name]
            same_value(f.type, value, got[f.name], f"{where}.{f.name}")
    elif isinstance(node, Array):
        assert len(got) == len(sent), where
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            same_value(node.items, a, b, f"{where}[{i}]")
    elif isinstance(node, Map):
        assert dict(got).keys() == sent.keys(), where
        for k, v in dict(got).items():
            same_value(node.values, sent[k], v, f"{where}[{k!r}]")
    elif isinstance(node, Enum):
        assert got == sent, where
    elif isinstance(node, Primitive):
        _primitive(node, sent, got, where)
    else:  # pragma: no cover - no fixed in the demo schemas
        raise AssertionError(node)


def _primitive(node: Primitive, sent: Any, got: Any, where: str) -> None:
    if node.logical in TS:
        want = parse_ts(sent)
        assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0), where
        assert abs(got - want) <= TS[node.logical], (where, sent, got)  # ms: sub-ms dropped
    elif node.logical == "date":
        assert got == dt.date.fromisoformat(sent), where
    elif node.logical == "uuid":
        assert got == str(uuid.UUID(sent)), where
    elif node.type == "bytes":
        assert got == base64.b64decode(sent), where
    elif node.type == "float":
        assert got == float(np.float32(sent)), (where, sent, got)
    else:
        assert got == sent and type(got) is type(sent), (where, sent, got)


def check_arrow_type(node: Node, arrow: pa.DataType, where: str) -> None:
    """The Arrow type of a column follows the Avro schema."""
    if isinstance(node, Nullable):
        node = node.inner
    if isinstance(node, Record):
        assert pa.types.is_struct(arrow), where
        assert [arrow.field(i).name for i in range(arrow.num_fields)] == [
            f.name for f in node.fields
        ]
        for i, f in enumerate(node.fields):
            check_arrow_type(f.type, arrow.field(i).type, f"{where}.{f.name}")
    elif isinstance(node, Array):
        assert pa.types.is_list(arrow), where
        check_arrow_type(node.items, arrow.value_type, f"{where}[]")
    elif isinstance(node, Map):
        assert pa.types.is_map(arrow) and arrow.key_type == pa.string(), where
        check_arrow_type(node.values, arrow.item_type, f"{where}{{}}")
    elif isinstance(node, Enum):
        assert arrow == pa.dictionary(pa.int32(), pa.string()), where
    else:
        assert isinstance(node, Primitive)
        want = {
            ("string", None): pa.string(),
            ("string", "uuid"): pa.string(),
            ("int", None): pa.int32(),
            ("int", "date"): pa.date32(),
            ("long", None): pa.int64(),
            ("long", "timestamp-millis"): pa.timestamp("ms", tz="UTC"),
            ("long", "timestamp-micros"): pa.timestamp("us", tz="UTC"),
            ("float", None): pa.float32(),
            ("double", None): pa.float64(),
            ("boolean", None): pa.bool_(),
            ("bytes", None): pa.binary(),
        }[node.type, node.logical]
        assert arrow == want, (where, arrow, want)


_DUCK = {
    ("string", None): "VARCHAR",
    ("string", "uuid"): "VARCHAR",
    ("int", None): "INTEGER",
    ("int", "date"): "DATE",
    ("long", None): "BIGINT",
    ("long", "timestamp-millis"): "TIMESTAMP WITH TIME ZONE",
    ("long", "timestamp-micros"): "TIMESTAMP WITH TIME ZONE",
    ("float", None): "FLOAT",
    ("double", None): "DOUBLE",
    ("boolean", None): "BOOLEAN",
    ("bytes", None): "BLOB",
}


def duckdb_type(node: Node) -> str:
    """The type DuckDB reports for the column of an Avro node."""
    if isinstance(node, Nullable):
        return duckdb_type(node.inner)
    if isinstance(node, Record):
        return "STRUCT(" + ", ".join(f"{f.name} {duckdb_type(f.type)}" for f in node.fields) + ")"
    if isinstance(node, Array):
        return duckdb_type(node.items) + "[]"
    if isinstance(node, Map):
        return f"MAP(VARCHAR, {duckdb_type(node.values)})"
    if isinstance(node, Enum):
        return "VARCHAR"
    assert isinstance(node, Primitive)
    return _DUCK[node.type, node.logical]
