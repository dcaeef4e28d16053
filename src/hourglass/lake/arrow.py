"""Avro schema → Arrow schema, and NDJSON bus batches → Arrow tables.

Lake columns: ``id``, ``source``, ``type``, ``time`` (client time, nullable),
``received_at`` (UTC), then the schema's fields as typed columns: records are
structs, enums dictionary-encoded strings, arrays lists, maps maps, timestamps
UTC timestamps in the schema's unit, ``date`` date32, ``uuid`` strings,
``bytes``/``fixed`` binary.

Two ways in, both without a Python loop per event:

* **columnar** (every schema without ``bytes``, ``fixed`` or ``map``): Arrow's
  multithreaded C++ JSON reader parses the NDJSON straight into columns with an
  explicit schema, and one ``cast`` turns strings into enums and dates;
* **typed** (schemas with those types, which JSON carries as base64 strings or
  objects the JSON reader cannot map): msgspec decodes the batch into the
  schema's compiled Structs in C, then pyarrow builds the columns from them.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.json as pa_json

from hourglass.schemas import CompiledSchema
from hourglass.schemas.parse import (
    Array,
    Enum,
    Fixed,
    Map,
    Node,
    Nullable,
    Primitive,
    Record,
    parse_schema,
)

TS_US = pa.timestamp("us", tz="UTC")
ENVELOPE = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("type", pa.string(), nullable=False),
    pa.field("time", TS_US),
    pa.field("received_at", TS_US, nullable=False),
]
_ENUM = pa.dictionary(pa.int32(), pa.string())
_PRIMITIVE: dict[str, pa.DataType] = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
}
_LOGICAL: dict[str, pa.DataType] = {
    "timestamp-millis": pa.timestamp("ms", tz="UTC"),
    "timestamp-micros": TS_US,
    "date": pa.date32(),
    "uuid": pa.string(),
}


def lake_type(node: Node) -> pa.DataType:
    if isinstance(node, Primitive):
        return _LOGICAL[node.logical] if node.logical else _PRIMITIVE[node.type]
    if isinstance(node, Nullable):
        return lake_type(node.inner)
    if isinstance(node, Enum):
        return _ENUM
    if isinstance(node, Fixed):
        return pa.binary(node.size)
    if isinstance(node, Array):
        return pa.list_(lake_type(node.items))
    if isinstance(node, Map):
        return pa.map_(pa.string(), lake_type(node.values))
    return pa.struct([pa.field(f.name, lake_type(f.type)) for f in node.fields])


def _json_type(node: Node) -> pa.DataType | None:
    """The type Arrow's JSON reader should parse into, or None if it cannot."""
    if isinstance(node, Primitive):
        if node.type == "bytes":
            return None
        if node.logical in ("timestamp-millis", "timestamp-micros"):
            return TS_US
        if node.logical in ("date", "uuid"):
            return pa.string()
        return _PRIMITIVE[node.type]
    if isinstance(node, Nullable):
        return _json_type(node.inner)
    if isinstance(node, Enum):
        return pa.string()
    if isinstance(node, (Fixed, Map)):
        return None
    if isinstance(node, Array):
        items = _json_type(node.items)
        return None if items is None else pa.list_(items)
    fields = [(f.name, _json_type(f.type)) for f in node.fields]
    if any(t is None for _, t in fields):
        return None
    return pa.struct([pa.field(name, t) for name, t in fields])


class LakeSchema:
    """Everything needed to turn one event type's bus batches into lake rows."""

    def __init__(self, schema: CompiledSchema) -> None:
        self.type_name = schema.type_name
        record: Record = parse_schema(schema.avro, location=str(schema.path or schema.type_name))
        self.data_fields = [pa.field(f.name, lake_type(f.type)) for f in record.fields]
        self.schema = pa.schema(ENVELOPE + self.data_fields)
        json_data = _json_type(record)
        self.columnar = json_data is not None
        self._read_schema = pa.schema([*ENVELOPE, pa.field("data", json_data or pa.null())])
        self._staged = pa.schema([*ENVELOPE, pa.field("data", pa.struct(self.data_fields))])
        row: Any = msgspec.defstruct(
            "Row",
            [
                ("id", str),
                ("source", str),
                ("type", str),
                ("time", dt.datetime | None, None),
                ("received_at", dt.datetime),
                ("data", schema.data_type),
            ],
            kw_only=True,
        )
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[row])

    def to_table(self, ndjson: bytes) -> pa.Table:
        """Rows for NDJSON lines of envelopes (as the gateway writes them)."""
        if not ndjson:
            return self.schema.empty_table()
        staged = self._columnar(ndjson) if self.columnar else self._typed(ndjson)
        data = staged.column("data")
        columns = [staged.column(f.name) for f in ENVELOPE]
        columns += [
            pa.chunked_array([chunk.field(i) for chunk in data.chunks], type=f.type)
            for i, f in enumerate(self.data_fields)
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _columnar(self, ndjson: bytes) -> pa.Table:
        table = pa_json.read_json(
            io.BytesIO(ndjson),
            read_options=pa_json.ReadOptions(block_size=max(1 << 20, len(ndjson) // 2 + 1)),
            parse_options=pa_json.ParseOptions(
                explicit_schema=self._read_schema, unexpected_field_behavior="ignore"
            ),
        )
        return table.cast(self._staged, safe=False)

    def _typed(self, ndjson: bytes) -> pa.Table:
        rows = self._decoder.decode(b"[" + ndjson.rstrip(b"\n").replace(b"\n", b",") + b"]")
        # bytes, datetimes and dates stay Python objects for Arrow; UUIDs become str.
        builtins = msgspec.to_builtins(rows, builtin_types=(bytes, dt.datetime, dt.date))
        return pa.Table.from_pylist(builtins, schema=self._staged)
