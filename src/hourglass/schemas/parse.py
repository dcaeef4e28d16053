"""Check an Avro ``.avsc`` and resolve it into a small tree of typed nodes.

The compiler (``avro``), the compatibility checker (``compat``) and whoever maps
schemas to Parquet columns all need the same reading of a schema: which name a
reference means (Avro's namespace scoping), what a default decodes to, which
constructs are supported. That reading lives here, once; they walk the result.

Errors read ``<file>: field 'a.b': <reason>``; ``[]`` and ``{}`` in a path stand
for array items and map values. Only what maps cleanly to JSON and Parquet is
supported: unions are limited to ``["null", T]``; logical types to
``timestamp-millis``/``-micros``, ``uuid`` and ``date``. Decisions the spec leaves open:

- An unknown ``logicalType`` is ignored and the underlying type used, as the spec
  says readers must; a supported one on the wrong base type is an error, since it is
  almost certainly a mistake.
- Defaults follow Avro's JSON encoding (``bytes``/``fixed`` defaults are strings of
  code points 0-255, timestamps and dates are numbers) and are converted here to the
  Python values msgspec decodes. A nullable field accepts ``null`` or a value of its
  type whatever the branch order (Avro 1.x wanted the first branch; newer readers
  accept any).
- Field names starting with ``__`` are rejected (Python would mangle them).
- Recursive records are rejected: they have no flat Parquet column type.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from hourglass.exceptions import SchemaError

__all__ = [
    "FROM_AVRO_JSON",
    "INT32_RANGE",
    "INT64_RANGE",
    "NO_DEFAULT",
    "Array",
    "Enum",
    "Field",
    "Fixed",
    "Map",
    "Node",
    "Nullable",
    "Primitive",
    "Record",
    "describe",
    "parse_schema",
]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_LOGICAL = {
    "timestamp-millis": "long",
    "timestamp-micros": "long",
    "uuid": "string",
    "date": "int",
}
_UNSUPPORTED_LOGICAL = frozenset(
    {
        "decimal",
        "big-decimal",
        "time-millis",
        "time-micros",
        "timestamp-nanos",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "local-timestamp-nanos",
        "duration",
    }
)
INT32_RANGE = (-(2**31), 2**31 - 1)
INT64_RANGE = (-(2**63), 2**63 - 1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
NO_DEFAULT: Any = msgspec.NODEFAULT


# The parsed tree. Named types carry full names ("music.Device"); a name referenced
# twice resolves to the same node object.


@dataclass(frozen=True, slots=True)
class Primitive:
    type: str
    logical: str | None = None


@dataclass(frozen=True, slots=True)
class Enum:
    name: str
    symbols: tuple[str, ...]
    default: str | None = None


@dataclass(frozen=True, slots=True)
class Fixed:
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class Array:
    items: Node


@dataclass(frozen=True, slots=True)
class Map:
    values: Node


@dataclass(frozen=True, slots=True)
class Nullable:
    inner: Node


@dataclass(frozen=True, slots=True)
class Field:
    """``path`` is dotted from the top record; ``default`` is already a Python value."""

    name: str
    type: Node
    path: str
    default: Any = NO_DEFAULT
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    fields: tuple[Field, ...]
    aliases: tuple[str, ...] = ()


Node = Primitive | Enum | Fixed | Array | Map | Nullable | Record


def describe(node: Node) -> str:
    """Name a type the way an Avro user would write it, for error messages."""
    match node:
        case Primitive(type=t, logical=None):
            return t
        case Primitive(type=t, logical=lt):
            return f"{t} ({lt})"
        case Enum() | Fixed() | Record():
            return f"{type(node).__name__.lower()} {node.name}"
        case Array(items=items):
            return f"array<{describe(items)}>"
        case Map(values=values):
            return f"map<{describe(values)}>"
        case Nullable(inner=inner):
            return f'["null", {describe(inner)}]'
    raise AssertionError(node)  # pragma: no cover


class _BadDefault(Exception):
    """Internal: a default does not fit its type; the parser adds the field path."""


class _Parser:
    """One pass over one ``.avsc``: validates it and resolves named types."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.named: dict[str, Enum | Fixed | Record] = {}
        self.in_progress: set[str] = set()

    def error(self, path: str, reason: str) -> SchemaError:
        where = f"field '{path}': " if path else ""
        return SchemaError(f"{self.location}: {where}{reason}")

    def full_name(self, spec: dict[str, Any], ns: str, path: str) -> tuple[str, str]:
        name, own_ns = spec.get("name"), spec.get("namespace")
        if not isinstance(name, str):
            raise self.error(path, f"{spec.get('type')} has no 'name'")
        if own_ns is not None and not isinstance(own_ns, str):
            raise self.error(path, f"namespace of '{name}' must be a string")
        if "." in name:
            ns, full = name.rpartition(".")[0], name
        else:
            ns = ns if own_ns is None else own_ns
            full = f"{ns}.{name}" if ns else name
        if not all(_NAME_RE.match(part) for part in full.split(".")):
            raise self.error(path, f"invalid name '{full}': must match [A-Za-z_][A-Za-z0-9_]*")
        if full in _PRIMITIVES:
            raise self.error(path, f"'{full}' is a primitive type and cannot be redefined")
        if full in self.named or full in self.in_progress:
            raise self.error(path, f"type '{full}' is defined twice")
        return full, ns

    def aliases(self, spec: dict[str, Any], ns: str, path: str) -> tuple[str, ...]:
        raw = spec.get("aliases", [])
        if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
            raise self.error(path, "'aliases' must be a list of strings")
        return tuple(a if "." in a or not ns else f"{ns}.{a}" for a in raw)

    def parse(self, spec: Any, ns: str, path: str) -> Node:
        if isinstance(spec, str):
            return Primitive(spec) if spec in _PRIMITIVES else self.reference(spec, ns, path)
        if isinstance(spec, list):
            return self.union(spec, ns, path)
        if not isinstance(spec, dict) or "type" not in spec:
            raise self.error(path, f"invalid type {spec!r}")
        return self.described(spec, ns, path)

    def described(self, spec: dict[str, Any], ns: str, path: str) -> Node:
        """A type written as an object: ``{"type": ..., ...}``."""
        kind, logical = spec["type"], spec.get("logicalType")
        if logical is not None and not isinstance(logical, str):
            raise self.error(path, f"'logicalType' must be a string, got {logical!r}")
        if logical in _UNSUPPORTED_LOGICAL:
            raise self.error(path, f"logicalType '{logical}' is not supported")
        if isinstance(kind, (list, dict)):  # {"type": [...]} or {"type": {...}}: the inner type
            return self.parse(kind, ns, path)
        if not isinstance(kind, str):
            raise self.error(path, f"invalid type {kind!r}")
        if kind in _PRIMITIVES:
            return self.primitive(kind, logical, path)
        if kind == "record":
            return self.record(spec, ns, path)
        if kind == "enum":
            return self.enum(spec, ns, path)
        if kind == "fixed":
            return self.fixed(spec, ns, path)
        if kind in ("array", "map"):
            return self.container(spec, kind, ns, path)
        return self.parse(kind, ns, path)  # a named reference

    def primitive(self, kind: str, logical: Any, path: str) -> Primitive:
        if logical not in _LOGICAL:
            return Primitive(kind)  # no logical type, or one unknown to Avro: ignored
        if _LOGICAL[logical] != kind:
            raise self.error(
                path, f"logicalType '{logical}' must annotate {_LOGICAL[logical]}, not {kind}"
            )
        return Primitive(kind, logical)

    def fixed(self, spec: dict[str, Any], ns: str, path: str) -> Fixed:
        full, _ = self.full_name(spec, ns, path)
        size = spec.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**31:
            raise self.error(path, f"fixed '{full}' needs an integer 'size' in [0, 2**31)")
        self.named[full] = node = Fixed(full, size)
        return node

    def container(self, spec: dict[str, Any], kind: str, ns: str, path: str) -> Array | Map:
        key, suffix = ("items", "[]") if kind == "array" else ("values", "{}")
        if key not in spec:
            raise self.error(path, f"{kind} needs '{key}'")
        inner = self.parse(spec[key], ns, path + suffix)
        return Array(inner) if kind == "array" else Map(inner)

    def reference(self, name: str, ns: str, path: str) -> Node:
        candidates = [name] if "." in name or not ns else [f"{ns}.{name}", name]
        for full in candidates:
            if full in self.in_progress:
                raise self.error(
                    path, f"record '{full}' refers to itself: recursive records are not supported"
                )
            if full in self.named:
                return self.named[full]
        raise self.error(path, f"unknown type '{name}'")

    def union(self, spec: list[Any], ns: str, path: str) -> Node:
        branches = [self.parse(b, ns, path) for b in spec] if len(spec) == 2 else []
        others = [b for b in branches if b != Primitive("null")]
        if len(others) != 1 or isinstance(others[0], Nullable):
            raise self.error(path, 'unions other than ["null", T] are not supported')
        return Nullable(others[0])

    def enum(self, spec: dict[str, Any], ns: str, path: str) -> Enum:
        full, _ = self.full_name(spec, ns, path)
        symbols = spec.get("symbols")
        if not isinstance(symbols, list) or not symbols:
            raise self.error(path, f"enum '{full}' needs a non-empty 'symbols' list")
        for symbol in symbols:
            if not isinstance(symbol, str) or not _NAME_RE.match(symbol):
                raise self.error(path, f"enum '{full}' has invalid symbol {symbol!r}")
        if len(set(symbols)) != len(symbols):
            raise self.error(path, f"enum '{full}' has duplicate symbols")
        default = spec.get("default")
        if default is not None and default not in symbols:
            raise self.error(path, f"enum '{full}' default {default!r} is not one of its symbols")
        self.named[full] = node = Enum(full, tuple(symbols), default)
        return node

    def record(self, spec: dict[str, Any], ns: str, path: str) -> Record:
        full, ns = self.full_name(spec, ns, path)
        raw_fields = spec.get("fields")
        if not isinstance(raw_fields, list):
            raise self.error(path, f"record '{full}' has no 'fields' list")
        self.in_progress.add(full)
        fields: dict[str, Field] = {}
        for raw in raw_fields:
            name = raw.get("name") if isinstance(raw, dict) else None
            if not isinstance(name, str):
                raise self.error(path, f"record '{full}' has a field without a 'name'")
            fpath = f"{path}.{name}" if path else name
            if not _NAME_RE.match(name):
                raise self.error(fpath, "invalid name: must match [A-Za-z_][A-Za-z0-9_]*")
            if name.startswith("__"):
                raise self.error(fpath, "names starting with '__' are not supported")
            if name in fields:
                raise self.error(fpath, "defined twice")
            if "type" not in raw:
                raise self.error(fpath, "has no 'type'")
            node = self.parse(raw["type"], ns, fpath)
            default = NO_DEFAULT
            if "default" in raw:
                try:
                    default = _python_default(node, raw["default"])
                except _BadDefault as exc:
                    raise self.error(
                        fpath,
                        f"default {raw['default']!r} does not match type {describe(node)}: {exc}",
                    ) from None
            fields[name] = Field(name, node, fpath, default, self.aliases(raw, "", fpath))
        self.in_progress.discard(full)
        self.named[full] = node = Record(full, tuple(fields.values()), self.aliases(spec, ns, path))
        return node


def _python_default(node: Node, value: Any) -> Any:
    """Turn an Avro JSON default into the Python value msgspec would decode."""
    match node:
        case Nullable(inner=inner):
            return None if value is None else _python_default(inner, value)
        case Primitive(type="bytes"):
            return _bytes_default(value, None)
        case Primitive():
            return _scalar_default(node, value)
        case Fixed(size=size):
            return _bytes_default(value, size)
        case Enum(symbols=symbols):
            if value not in symbols:
                raise _BadDefault(f"expected one of {', '.join(symbols)}")
            return value
        case Array(items=items) if isinstance(value, list):
            return [_python_default(items, v) for v in value]
        case Map(values=values) if isinstance(value, dict):
            return {k: _python_default(values, v) for k, v in value.items()}
        case Record() if isinstance(value, dict):
            return _record_default(node, value)
        case Array():
            raise _BadDefault("expected a list")
    raise _BadDefault("expected an object")


def _is_int(value: Any, bounds: tuple[int, int]) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]
    )


_SCALAR_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "null": (lambda v: v is None, "expected null"),
    "boolean": (lambda v: isinstance(v, bool), "expected true or false"),
    "int": (
        lambda v: _is_int(v, INT32_RANGE),
        f"expected an integer in [{INT32_RANGE[0]}, {INT32_RANGE[1]}]",
    ),
    "long": (
        lambda v: _is_int(v, INT64_RANGE),
        f"expected an integer in [{INT64_RANGE[0]}, {INT64_RANGE[1]}]",
    ),
    "float": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "expected a number",
    ),
    "string": (lambda v: isinstance(v, str), "expected a string"),
}
_SCALAR_CHECKS["double"] = _SCALAR_CHECKS["float"]
# Avro JSON's integers for the logical types (in defaults, and in events the
# gateway reads in that encoding), as the Python values msgspec decodes.
FROM_AVRO_JSON: dict[str, Callable[[int], Any]] = {
    "date": lambda v: datetime.date(1970, 1, 1) + datetime.timedelta(days=v),
    "timestamp-millis": lambda v: _EPOCH + datetime.timedelta(milliseconds=v),
    "timestamp-micros": lambda v: _EPOCH + datetime.timedelta(microseconds=v),
}
_SCALAR_CONVERT: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "double": float,
    **FROM_AVRO_JSON,
    "uuid": uuid.UUID,
}


def _scalar_default(node: Primitive, value: Any) -> Any:
    check, expected = _SCALAR_CHECKS[node.type]
    if not check(value):
        raise _BadDefault(expected)
    convert = _SCALAR_CONVERT.get(node.logical or node.type)
    try:
        return value if convert is None else convert(value)
    except OverflowError:
        raise _BadDefault("outside the representable date range") from None
    except ValueError:
        raise _BadDefault(f"not a valid {node.logical}") from None


def _bytes_default(value: Any, size: int | None) -> bytes:
    """Avro writes a bytes default as a string whose code points 0-255 are the bytes."""
    try:
        data: bytes = value.encode("latin-1")
    except (AttributeError, UnicodeEncodeError):
        raise _BadDefault("expected a string of code points 0-255") from None
    if size is not None and len(data) != size:
        raise _BadDefault(f"expected {size} bytes")
    return data


def _record_default(node: Record, value: dict[str, Any]) -> dict[str, Any]:
    unknown = set(value) - {f.name for f in node.fields}
    if unknown:
        raise _BadDefault(f"unknown field '{sorted(unknown)[0]}'")
    out = {}
    for f in node.fields:
        if f.name in value:
            out[f.name] = _python_default(f.type, value[f.name])
        elif f.default is NO_DEFAULT:
            raise _BadDefault(f"missing field '{f.name}'")
    return out


def parse_schema(avsc: Any, *, location: str = "<schema>") -> Record:
    """Check an ``.avsc`` document and return its top-level record as a node tree."""
    if not isinstance(avsc, dict) or avsc.get("type") != "record":
        kind = avsc.get("type") if isinstance(avsc, dict) else type(avsc).__name__
        raise SchemaError(f"{location}: top-level type must be a record, got {kind!r}")
    return _Parser(location).record(avsc, "", "")
