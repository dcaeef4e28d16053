"""Hypothesis strategies shared by the test suites.

``valid_data(avsc)`` generates the JSON ``data`` of an event that the schema accepts,
in the form a producer would send it: timestamps as RFC 3339 strings with an offset,
UUIDs and dates as strings, bytes as base64. It walks the parsed schema tree of
``hourglass.schemas.avro`` so name resolution is not implemented twice.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from hypothesis import strategies as st

from hourglass.schemas.parse import (
    NO_DEFAULT,
    Array,
    Enum,
    Field,
    Fixed,
    Map,
    Node,
    Nullable,
    Primitive,
    Record,
    parse_schema,
)

__all__ = ["valid_data", "valid_value"]

_OFFSETS = [
    datetime.UTC,
    datetime.timezone(datetime.timedelta(hours=2)),
    datetime.timezone(-datetime.timedelta(hours=5, minutes=30)),
]
_FLOAT32_MAX = 3.4028234663852886e38


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _timestamps() -> st.SearchStrategy[str]:
    return st.datetimes(
        min_value=datetime.datetime(1900, 1, 1),
        max_value=datetime.datetime(2200, 1, 1),
        timezones=st.sampled_from(_OFFSETS),
    ).map(lambda dt: dt.isoformat())


_PRIMITIVES: dict[tuple[str, str | None], st.SearchStrategy[Any]] = {
    ("null", None): st.none(),
    ("boolean", None): st.booleans(),
    ("int", None): st.integers(-(2**31), 2**31 - 1),
    ("long", None): st.integers(-(2**63), 2**63 - 1),
    ("float", None): st.floats(-_FLOAT32_MAX, _FLOAT32_MAX, allow_nan=False, allow_infinity=False),
    ("double", None): st.floats(allow_nan=False, allow_infinity=False),
    ("string", None): st.text(max_size=20),
    ("bytes", None): st.binary(max_size=16).map(_b64),
    ("long", "timestamp-millis"): _timestamps(),
    ("long", "timestamp-micros"): _timestamps(),
    ("string", "uuid"): st.uuids().map(str),
    ("int", "date"): st.dates().map(lambda d: d.isoformat()),
}


def valid_value(node: Node) -> st.SearchStrategy[Any]:
    """JSON-able values accepted for one parsed schema node."""
    match node:
        case Primitive(type=kind, logical=logical):
            return _PRIMITIVES[kind, logical]
        case Fixed(size=size):
            return st.binary(min_size=size, max_size=size).map(_b64)
        case Enum(symbols=symbols):
            return st.sampled_from(symbols)
        case Array(items=items):
            return st.lists(valid_value(items), max_size=3)
        case Map(values=values):
            return st.dictionaries(st.text(max_size=8), valid_value(values), max_size=3)
        case Nullable(inner=inner):
            return st.none() | valid_value(inner)
        case Record(fields=fields):
            return st.fixed_dictionaries(
                {f.name: valid_value(f.type) for f in fields if not _has_default(f)},
                optional={f.name: valid_value(f.type) for f in fields if _has_default(f)},
            )
    raise AssertionError(node)


def _has_default(field: Field) -> bool:
    return field.default is not NO_DEFAULT


def valid_data(avsc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON-able ``data`` objects that the compiled ``avsc`` accepts."""
    return valid_value(parse_schema(avsc))
