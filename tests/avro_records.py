"""Python-native Avro records, read from the raw ``.avsc`` without hourglass's parser.

The Avro JSON tests check hourglass's schema compiler against fastavro, so nothing
here may reuse ``hourglass.schemas``: a bug in its name resolution or type mapping
would otherwise be built into the expectation too. ``resolve`` reads an ``.avsc``
into a small tree of its own (named types, references to names defined earlier,
namespaces, ``["null", T]`` unions in either order, logical types); the rest walks
that tree:

- ``records`` generates records as a Python Avro library takes them (``datetime``,
  ``date``, ``UUID``, ``bytes``), leaving out fields with defaults at times;
- ``avro_json`` encodes them with fastavro's ``json_writer`` (bare unions), and
  ``for_gateway`` turns its latin-1 strings of ``bytes``/``fixed`` into base64, the
  one thing of Avro JSON the gateway reads otherwise (as JSON clients send bytes);
- ``expected`` is what the gateway and the lake must hold for a record: defaults
  filled in, ``timestamp-millis`` floored to the millisecond (as fastavro encodes
  it), UUIDs as strings;
- ``rfc3339``, ``from_bus`` and ``from_lake`` turn that into the canonical JSON
  form, and read the bus's JSON and the lake's Python values back into it.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro
from hypothesis import strategies as st

__all__ = [
    "EPOCH",
    "EPOCH_DAY",
    "UNITS",
    "Arr",
    "EnumT",
    "FieldT",
    "FixedT",
    "MapT",
    "Node",
    "Opt",
    "Prim",
    "Rec",
    "avro_json",
    "expected",
    "for_gateway",
    "from_avro_json",
    "from_bus",
    "from_lake",
    "omit_defaults",
    "records",
    "resolve",
    "rfc3339",
]

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_DAY = dt.date(1970, 1, 1)
UNITS = {
    "timestamp-millis": dt.timedelta(milliseconds=1),
    "timestamp-micros": dt.timedelta(microseconds=1),
}
_LOGICAL = {"timestamp-millis": "long", "timestamp-micros": "long", "date": "int", "uuid": "string"}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_MISSING: Any = object()


# ------------------------------------------------------------------ the tree


@dataclass(frozen=True)
class Prim:
    type: str
    logical: str | None = None


@dataclass(frozen=True)
class EnumT:
    name: str
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class FixedT:
    name: str
    size: int


@dataclass(frozen=True)
class Arr:
    items: Node


@dataclass(frozen=True)
class MapT:
    values: Node


@dataclass(frozen=True)
class Opt:
    inner: Node


@dataclass(frozen=True)
class FieldT:
    name: str
    type: Node
    default: Any = _MISSING  # as written in the .avsc (Avro's JSON encoding)


@dataclass(eq=False)
class Rec:
    name: str
    fields: list[FieldT] = field(default_factory=list)


Node = Prim | EnumT | FixedT | Arr | MapT | Opt | Rec


def resolve(avsc: dict[str, Any]) -> Rec:
    """The top-level record of ``avsc``; a name used twice is the same node."""
    node = _Resolver().node(avsc, "")
    assert isinstance(node, Rec)
    return node


class _Resolver:
    def __init__(self) -> None:
        self.named: dict[str, Node] = {}

    def node(self, spec: Any, ns: str) -> Node:
        if isinstance(spec, str):
            return Prim(spec) if spec in _PRIMITIVES else self.reference(spec, ns)
        if isinstance(spec, list):
            assert len(spec) == 2 and "null" in spec, spec
            return Opt(self.node(spec[1 - spec.index("null")], ns))
        kind = spec["type"]
        if isinstance(kind, dict | list):
            return self.node(kind, ns)
        if kind in _PRIMITIVES:
            logical = spec.get("logicalType")
            return Prim(kind, logical if _LOGICAL.get(logical) == kind else None)
        if kind in ("record", "enum", "fixed"):
            return self.named_type(spec, kind, ns)
        if kind == "array":
            return Arr(self.node(spec["items"], ns))
        if kind == "map":
            return MapT(self.node(spec["values"], ns))
        return self.reference(kind, ns)

    def reference(self, name: str, ns: str) -> Node:
        full = name if "." in name or not ns else f"{ns}.{name}"
        return self.named[full] if full in self.named else self.named[name]

    def named_type(self, spec: dict[str, Any], kind: str, ns: str) -> Node:
        name = spec["name"]
        if "." in name:
            ns, full = name.rpartition(".")[0], name
        else:
            ns = spec.get("namespace", ns)
            full = f"{ns}.{name}" if ns else name
        if kind == "enum":
            self.named[full] = EnumT(full, tuple(spec["symbols"]))
        elif kind == "fixed":
            self.named[full] = FixedT(full, spec["size"])
        else:
            record = Rec(full)
            for f in spec["fields"]:  # the record's namespace encloses its fields
                record.fields.append(
                    FieldT(f["name"], self.node(f["type"], ns), f.get("default", _MISSING))
                )
            self.named[full] = record
        return self.named[full]


# ------------------------------------------------------------ generated records

_OFFSETS = [
    UTC,
    dt.timezone(dt.timedelta(hours=2)),
    dt.timezone(-dt.timedelta(hours=5, minutes=30)),
    dt.timezone(dt.timedelta(hours=23, minutes=59)),
    dt.timezone(-dt.timedelta(hours=23, minutes=59)),
]
_EDGE_INSTANTS = [  # naive, read as UTC
    dt.datetime.min,
    dt.datetime.min.replace(microsecond=1),
    dt.datetime.max,
    dt.datetime(1970, 1, 1),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
    dt.datetime(1969, 12, 31, 23, 59, 59, 998999),
    dt.datetime(1900, 1, 1),
]
_EDGE_DAYS = [dt.date.min, dt.date.max, EPOCH_DAY, EPOCH_DAY - dt.timedelta(days=1)]


def _instant(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """``naive`` read as UTC, shown in ``tz`` when Python can hold it there."""
    utc = naive.replace(tzinfo=UTC)
    try:
        return utc.astimezone(tz)
    except OverflowError:  # local time before year 1 or after 9999
        return utc


_INSTANTS = st.builds(
    _instant, st.sampled_from(_EDGE_INSTANTS) | st.datetimes(), st.sampled_from(_OFFSETS)
)
_SCALARS: dict[tuple[str, str | None], st.SearchStrategy[Any]] = {
    ("null", None): st.none(),
    ("boolean", None): st.booleans(),
    ("int", None): st.integers(-(2**31), 2**31 - 1),
    ("long", None): st.integers(-(2**63), 2**63 - 1),
    # Whole numbers too: fastavro takes ints for float and double.
    ("float", None): st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.integers(-(2**24), 2**24),
    ("double", None): st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53),
    ("string", None): st.text(max_size=12),
    ("bytes", None): st.binary(max_size=12),
    ("long", "timestamp-millis"): _INSTANTS,
    ("long", "timestamp-micros"): _INSTANTS,
    ("int", "date"): st.sampled_from(_EDGE_DAYS) | st.dates(),
    ("string", "uuid"): st.uuids() | st.uuids().map(str),
}


def records(node: Node) -> st.SearchStrategy[Any]:
    """Values of ``node`` as a Python Avro library takes them."""
    match node:
        case Prim(type=kind, logical=logical):
            return _SCALARS[kind, logical]
        case EnumT(symbols=symbols):
            return st.sampled_from(symbols)
        case FixedT(size=size):
            return st.binary(min_size=size, max_size=size)
        case Arr(items=items):
            return st.lists(records(items), max_size=3)
        case MapT(values=values):
            # Keys not empty: fastavro's JSON encoder fails on "" ("No key was set").
            return st.dictionaries(st.text(min_size=1, max_size=6), records(values), max_size=3)
        case Opt(inner=inner):
            return st.none() | records(inner)
        case Rec(fields=fields):
            return st.fixed_dictionaries(
                {f.name: records(f.type) for f in fields if not _omittable(f)},
                optional={f.name: records(f.type) for f in fields if _omittable(f)},
            )
    raise AssertionError(node)


def _omittable(f: FieldT) -> bool:
    """Fields with a default, except where fastavro cannot write the default: it
    hands the ``.avsc``'s latin-1 string of a bytes/fixed default to its bytes
    writer (``'str' object has no attribute 'decode'``)."""
    return f.default is not _MISSING and not _holds_bytes(f.type, set())


def _holds_bytes(node: Node, seen: set[int]) -> bool:
    match node:
        case Prim(type="bytes") | FixedT():
            return True
        case Arr(items=inner) | MapT(values=inner) | Opt(inner=inner):
            return _holds_bytes(inner, seen)
        case Rec(fields=fields) if id(node) not in seen:
            seen.add(id(node))
            return any(_holds_bytes(f.type, seen) for f in fields)
    return False


# ------------------------------------------------------------------- walking

Leaf = Callable[[Node, Any], Any]


def _walk(node: Node, value: Any, leaf: Leaf, default: Callable[[FieldT], Any] | None) -> Any:
    """``value`` rebuilt with ``leaf`` applied to each scalar; a record field missing
    from ``value`` is ``default(field)``. Maps may come as (key, value) pairs."""
    match node:
        case Opt(inner=inner):
            return None if value is None else _walk(inner, value, leaf, default)
        case Arr(items=items):
            return [_walk(items, v, leaf, default) for v in value]
        case MapT(values=values):
            pairs = value.items() if isinstance(value, dict) else value
            return {k: _walk(values, v, leaf, default) for k, v in pairs}
        case Rec(fields=fields):
            return {
                f.name: _walk(f.type, value[f.name], leaf, default)
                if f.name in value or default is None
                else default(f)
                for f in fields
            }
    return leaf(node, value)


def _default(f: FieldT) -> Any:
    return from_avro_json(f.type, f.default)


def _from_avro_leaf(node: Node, value: Any) -> Any:
    match node:
        case Prim(logical=logical) if logical in UNITS:
            return EPOCH + value * UNITS[logical]
        case Prim(logical="date"):
            return EPOCH_DAY + dt.timedelta(days=value)
        case Prim(type="bytes") | FixedT():
            return value.encode("latin-1")
    return value


def from_avro_json(node: Node, value: Any) -> Any:
    """A value in Avro's JSON encoding (a schema default) as ``expected`` holds it."""
    return _walk(node, value, _from_avro_leaf, _default)


def _expected_leaf(node: Node, value: Any) -> Any:
    match node:
        case Prim(logical="timestamp-millis"):
            return value - dt.timedelta(microseconds=value.microsecond % 1000)
        case Prim(logical="uuid"):
            return str(uuid.UUID(str(value)))
    return value


def expected(node: Node, record: Any) -> Any:
    """What the gateway and the lake must hold for ``record``.

    fastavro floors ``timestamp-millis`` to the millisecond (also before 1970);
    instants compare equal whatever their offset.
    """
    return _walk(node, record, _expected_leaf, _default)


def _canonical_leaf(node: Node, value: Any) -> Any:
    match node:
        case Prim(logical=logical) if logical in UNITS or logical == "date":
            return value.isoformat()
        case Prim(type="bytes") | FixedT():
            return base64.b64encode(value).decode()
    return value


def rfc3339(node: Node, value: Any) -> Any:
    """An ``expected`` value as JSON clients send it: RFC 3339, ISO dates, base64."""
    return _walk(node, value, _canonical_leaf, None)


def _bus_leaf(node: Node, value: Any) -> Any:
    match node:
        case Prim(logical=logical) if logical in UNITS:
            assert isinstance(value, str), f"a {logical} on the bus is {value!r}, not RFC 3339"
            return dt.datetime.fromisoformat(value)
        case Prim(logical="date"):
            assert isinstance(value, str), f"a date on the bus is {value!r}, not YYYY-MM-DD"
            return dt.date.fromisoformat(value)
        case Prim(type="bytes") | FixedT():
            return base64.b64decode(value, validate=True)
    return value


def from_bus(node: Node, value: Any) -> Any:
    """The bus's JSON ``data`` read back; timestamps and dates must be strings."""
    return _walk(node, value, _bus_leaf, None)


def _lake_leaf(node: Node, value: Any) -> Any:
    if isinstance(node, Prim) and node.logical in UNITS:
        assert value.utcoffset() == dt.timedelta(0), value
    return value


def from_lake(node: Node, value: Any) -> Any:
    """A lake row's Python value (pyarrow's or DuckDB's) in ``expected``'s shape."""
    return _walk(node, value, _lake_leaf, None)


# --------------------------------------------------------------- to the gateway


def avro_json(parsed: Any, batch: list[Any]) -> list[Any]:
    """``batch`` encoded by fastavro as Avro JSON, bare unions, one value each."""
    out = io.StringIO()
    fastavro.json_writer(out, parsed, batch, write_union_type=False)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _base64_leaf(node: Node, value: Any) -> Any:
    if isinstance(node, FixedT) or node == Prim("bytes"):
        return base64.b64encode(value.encode("latin-1")).decode()
    return value


def for_gateway(node: Node, sent: Any) -> Any:
    """fastavro's Avro JSON with bytes/fixed as base64 instead of latin-1 strings."""
    return _walk(node, sent, _base64_leaf, None)


def omit_defaults(node: Node, sent: Any, record: Any) -> Any:
    """``sent`` without the record fields that ``record`` left out, at any depth."""
    match node:
        case Opt(inner=inner) if sent is not None:
            return omit_defaults(inner, sent, record)
        case Arr(items=items):
            return [omit_defaults(items, s, r) for s, r in zip(sent, record, strict=True)]
        case MapT(values=values):
            return {k: omit_defaults(values, s, record[k]) for k, s in sent.items()}
        case Rec(fields=fields):
            return {
                f.name: omit_defaults(f.type, sent[f.name], record[f.name])
                for f in fields
                if f.name in record
            }
    return sent
