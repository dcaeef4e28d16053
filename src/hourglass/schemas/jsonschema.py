"""The JSON Schema of an Avro schema's JSON form, as producers send it.

Derived from the parsed tree of ``hourglass.schemas.parse`` (so name resolution
is not done twice), in the JSON form the gateway accepts: timestamps as RFC 3339
strings with an offset or Avro JSON's epoch integers, dates as ``YYYY-MM-DD`` or
a day count, UUIDs as strings, ``bytes``/``fixed`` as base64.  The gateway's
OpenAPI document (``gateway/openapi.py``) describes each type's ``data`` with it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hourglass.schemas.avro import AVRO_JSON_BOUNDS, CompiledSchema
from hourglass.schemas.parse import (
    INT32_RANGE,
    INT64_RANGE,
    NO_DEFAULT,
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

__all__ = ["JsonSchema", "data_schema", "node_schema"]

JsonSchema = dict[str, Any]

_FLOAT32_MAX = 3.4028234663852886e38
_B64 = "[A-Za-z0-9+/]"
# Standard base64 with padding, as msgspec decodes it (and encodes it back).
_BASE64_PATTERN = f"^(?:{_B64}{{4}})*(?:{_B64}{{2}}==|{_B64}{{3}}=)?$"

# JSON Schema counts 1.0 as an integer; Avro's JSON decoding (and the gateway) do not.
_INTEGER = "a JSON integer literal: 1, not 1.0 or 1e0"
_SCALARS: dict[tuple[str, str | None], JsonSchema] = {
    ("null", None): {"type": "null"},
    ("boolean", None): {"type": "boolean"},
    ("int", None): {
        "type": "integer",
        "minimum": INT32_RANGE[0],
        "maximum": INT32_RANGE[1],
        "description": _INTEGER,
    },
    ("long", None): {
        "type": "integer",
        "minimum": INT64_RANGE[0],
        "maximum": INT64_RANGE[1],
        "description": _INTEGER,
    },
    ("float", None): {"type": "number", "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX},
    ("double", None): {"type": "number"},
    ("string", None): {"type": "string"},
    ("bytes", None): {
        "type": "string",
        "contentEncoding": "base64",
        "pattern": _BASE64_PATTERN,
        "description": "base64 (standard alphabet, padded)",
    },
    ("long", "timestamp-millis"): {
        "type": ["string", "integer"],
        "format": "date-time",
        "minimum": AVRO_JSON_BOUNDS["timestamp-millis"][0],
        "maximum": AVRO_JSON_BOUNDS["timestamp-millis"][1],
        "description": "RFC 3339 with an offset, or milliseconds since the epoch (Avro JSON, "
        + _INTEGER
        + "); stored with millisecond precision",
    },
    ("long", "timestamp-micros"): {
        "type": ["string", "integer"],
        "format": "date-time",
        "minimum": AVRO_JSON_BOUNDS["timestamp-micros"][0],
        "maximum": AVRO_JSON_BOUNDS["timestamp-micros"][1],
        "description": "RFC 3339 with an offset, or microseconds since the epoch (Avro JSON, "
        + _INTEGER
        + "); stored with microsecond precision",
    },
    ("string", "uuid"): {"type": "string", "format": "uuid"},
    ("int", "date"): {
        "type": ["string", "integer"],
        "format": "date",
        "minimum": AVRO_JSON_BOUNDS["date"][0],
        "maximum": AVRO_JSON_BOUNDS["date"][1],
        "description": "YYYY-MM-DD, or days since 1970-01-01 (Avro JSON, " + _INTEGER + ")",
    },
}


def node_schema(node: Node) -> JsonSchema:
    """The JSON Schema of the JSON form of one parsed Avro node (no ``$ref``)."""
    match node:
        case Primitive(type=kind, logical=logical):
            return dict(_SCALARS[kind, logical])
        case Fixed(name=name, size=size):
            return {
                "type": "string",
                "contentEncoding": "base64",
                "pattern": _fixed_pattern(size),
                "description": f"fixed {name}: {size} bytes, base64 (standard alphabet, padded)",
            }
        case Enum(name=name, symbols=symbols):
            return {"type": "string", "enum": list(symbols), "title": name}
        case Array(items=items):
            return {"type": "array", "items": node_schema(items)}
        case Map(values=values):
            return {"type": "object", "additionalProperties": node_schema(values)}
        case Nullable(inner=inner):
            return _nullable(node_schema(inner))
        case Record():
            return _record_schema(node)
    raise AssertionError(node)  # pragma: no cover


def _record_schema(record: Record) -> JsonSchema:
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    for f in record.fields:
        schema = node_schema(f.type)
        if f.default is NO_DEFAULT:
            required.append(f.name)
        else:
            schema["default"] = msgspec.to_builtins(f.default)
        properties[f.name] = schema
    out: JsonSchema = {
        "type": "object",
        "title": record.name,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def _nullable(schema: JsonSchema) -> JsonSchema:
    kind = schema.get("type")
    if kind is None:  # pragma: no cover - every node schema names its type
        return {"anyOf": [schema, {"type": "null"}]}
    out = dict(schema)
    out["type"] = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _fixed_pattern(size: int) -> str:
    groups, rest = divmod(size, 3)
    tail = {0: "", 1: f"{_B64}{{2}}==", 2: f"{_B64}{{3}}="}[rest]
    return f"^(?:{_B64}{{4}}){{{groups}}}{tail}$"


def data_schema(schema: CompiledSchema) -> JsonSchema:
    """The JSON Schema of ``data`` for one event type."""
    out = node_schema(parse_schema(schema.avro, location=str(schema.path or "<schema>")))
    doc = schema.avro.get("doc")
    if isinstance(doc, str):
        out["description"] = doc
    return out
