"""Avro schema → Arrow schema, and NDJSON bus batches → Arrow tables.

Lake columns: ``id``, ``source``, ``type``, ``time`` (client time, nullable),
``received_at`` (UTC), then the schema's fields as typed columns: records are
structs, enums dictionary-encoded strings, arrays lists, maps maps, timestamps
UTC timestamps in the schema's unit, ``date`` date32, ``uuid`` strings,
``bytes``/``fixed`` binary.

``to_table`` also returns the sequence attributes of Hourglass's own producers
(``hgproducer``, ``hgseq``, ``hgacked``: ``events.py``) as three last columns,
``SEQUENCE_COLUMNS``, null for other events.  Their names cannot be an Avro
field's; the loader dedups by them and drops them, so no lake file holds them.

Two ways in, both without a Python loop per event:

* **columnar** (every schema without ``bytes``, ``fixed`` or ``map``): Arrow's
  multithreaded C++ JSON reader parses the NDJSON straight into columns with an
  explicit schema, and one ``cast`` turns strings into enums and dates.  It reads
  every timestamp in µs; ``timestamp-millis`` values are first floored to the
  millisecond (the cast alone rounds towards zero, so 1969-12-31T23:59:59.9995Z
  would land a millisecond later than Avro, fastavro and the typed path put it);
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
import pyarrow.compute as pc
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
SEQUENCE = [
    pa.field("hgproducer", pa.string()),
    pa.field("hgseq", pa.int64()),
    pa.field("hgacked", pa.int64()),
]
SEQUENCE_COLUMNS = ["@" + f.name for f in SEQUENCE]  # "@": not a legal Avro name
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


_TS_MS = _LOGICAL["timestamp-millis"]


def _has_millis(lake: pa.DataType) -> bool:
    if lake == _TS_MS:
        return True
    if pa.types.is_struct(lake):
        return any(_has_millis(lake.field(i).type) for i in range(lake.num_fields))
    if pa.types.is_list(lake):
        return _has_millis(lake.value_type)
    return False


def _floor_to_ms(array: pa.Array) -> pa.Array:
    """µs timestamps floored to whole ms; only values before 1970 can change, and
    the common batch has none (one pass to find out).  ``floor_temporal`` would
    do it too, at about 15 times the cost: it goes through the time zone."""
    us = array.cast(pa.int64())
    low = pc.min(us).as_py()
    if low is None or low >= 0:
        return array
    truncated = pc.multiply(pc.divide(us, 1000), 1000)  # integer division: towards zero
    floored = pc.if_else(pc.greater(truncated, us), pc.subtract(truncated, 1000), truncated)
    return floored.cast(array.type)


def _floor_millis(array: pa.Array, lake: pa.DataType) -> pa.Array:
    """``array`` (as read) with every value that lands in a ``timestamp-millis``
    column floored to the millisecond; ``lake`` is the column's lake type."""
    if not _has_millis(lake):
        return array
    if lake == _TS_MS:
        return _floor_to_ms(array)
    if pa.types.is_struct(lake):
        children = [
            _floor_millis(array.field(i), lake.field(i).type) for i in range(lake.num_fields)
        ]
        fields = [pa.field(array.type.field(i).name, c.type) for i, c in enumerate(children)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=array.is_null())
    values = _floor_millis(array.values, lake.value_type)
    return pa.ListArray.from_arrays(array.offsets, values, mask=array.is_null())


class LakeSchema:
    """Everything needed to turn one event type's bus batches into lake rows."""

    def __init__(self, schema: CompiledSchema) -> None:
        self.type_name = schema.type_name
        record: Record = parse_schema(schema.avro, location=str(schema.path or schema.type_name))
        self.data_fields = [pa.field(f.name, lake_type(f.type)) for f in record.fields]
        self.schema = pa.schema(ENVELOPE + self.data_fields)  # of the lake's files
        self.rows_schema = pa.schema(
            ENVELOPE
            + self.data_fields
            + [f.with_name(n) for f, n in zip(SEQUENCE, SEQUENCE_COLUMNS, strict=True)]
        )
        json_data = _json_type(record)
        self.columnar = json_data is not None
        self._data_lake_type = pa.struct(self.data_fields)
        self._floor = _has_millis(self._data_lake_type)
        data_read = pa.field("data", json_data or pa.null())
        self._read_schema = pa.schema([*ENVELOPE, data_read, *SEQUENCE])
        self._staged = pa.schema(
            [*ENVELOPE, pa.field("data", pa.struct(self.data_fields)), *SEQUENCE]
        )
        row: Any = msgspec.defstruct(
            "Row",
            [
                ("id", str),
                ("source", str),
                ("type", str),
                ("time", dt.datetime | None, None),
                ("received_at", dt.datetime),
                ("data", schema.data_type),
                ("hgproducer", str | None, None),
                ("hgseq", int | None, None),
                ("hgacked", int | None, None),
            ],
            kw_only=True,
        )
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[row])

    def to_table(self, ndjson: bytes) -> pa.Table:
        """Rows for NDJSON lines of envelopes (as the gateway writes them), in
        ``rows_schema``: the lake's columns, then ``SEQUENCE_COLUMNS``."""
        if not ndjson:
            return self.rows_schema.empty_table()
        staged = self._columnar(ndjson) if self.columnar else self._typed(ndjson)
        data = staged.column("data")
        columns = [staged.column(f.name) for f in ENVELOPE]
        columns += [
            pa.chunked_array([chunk.field(i) for chunk in data.chunks], type=f.type)
            for i, f in enumerate(self.data_fields)
        ]
        columns += [staged.column(f.name) for f in SEQUENCE]
        return pa.Table.from_arrays(columns, schema=self.rows_schema)

    def _columnar(self, ndjson: bytes) -> pa.Table:
        table = pa_json.read_json(
            io.BytesIO(ndjson),
            read_options=pa_json.ReadOptions(block_size=max(1 << 20, len(ndjson) // 2 + 1)),
            parse_options=pa_json.ParseOptions(
                explicit_schema=self._read_schema, unexpected_field_behavior="ignore"
            ),
        )
        if self._floor:
            data = table.column("data")
            floored = [_floor_millis(chunk, self._data_lake_type) for chunk in data.chunks]
            table = table.set_column(
                table.schema.get_field_index("data"), "data", pa.chunked_array(floored, data.type)
            )
        return table.cast(self._staged, safe=False)

    def _typed(self, ndjson: bytes) -> pa.Table:
        rows = self._decoder.decode(b"[" + ndjson.rstrip(b"\n").replace(b"\n", b",") + b"]")
        # bytes, datetimes and dates stay Python objects for Arrow; UUIDs become str.
        builtins = msgspec.to_builtins(rows, builtin_types=(bytes, dt.datetime, dt.date))
        return pa.Table.from_pylist(builtins, schema=self._staged)
