"""Compile Avro record schemas into msgspec types, and hold them by event type.

Every event's ``data`` is validated against the schema of its CloudEvents ``type``.
That has to cost no Python per event, so each ``.avsc`` is turned once, at start-up,
into nested ``msgspec.Struct`` types: ``msgspec.json.decode(data, type=data_type)``
is then the whole validation and runs in C, and its error names the JSON path
(`` - at `$.device.platform` ``). Records forbid unknown fields, ints carry their
int32/int64 range, enums become ``Literal`` types, timestamps must carry an offset.

Each schema is compiled twice. ``data_type`` is the canonical JSON form (timestamps
as RFC 3339 strings, dates as ``YYYY-MM-DD``): the fast path, and what the bus
carries. ``avro_json_type`` also accepts Avro's own JSON encoding of the logical
types (``timestamp-millis``/``-micros`` as epoch integers, ``date`` as a day count),
as ``int | datetime`` unions that msgspec still checks in C; ``to_canonical`` then
turns the integers of one decoded record into ``datetime``/``date`` in place, so
what goes on the bus is the canonical form either way. Integer bounds are those
of Python's ``datetime``/``date`` (years 1-9999), so that conversion cannot fail.
The gateway uses the second form only when a batch fails the first, so producers
of RFC 3339 strings pay nothing for it.

The schema is first checked and resolved by ``parse``; this module only maps the
resulting nodes. Field names that are Python keywords get a trailing ``_`` as
attribute name and keep their JSON name. Mutable defaults (lists, maps, records)
are rebuilt per event by a ``default_factory``, so events never share them.
"""

from __future__ import annotations

import datetime
import functools
import keyword
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import msgspec
from msgspec import Meta

from hourglass.config import Settings
from hourglass.exceptions import ConfigError, SchemaError
from hourglass.schemas.parse import (
    FROM_AVRO_JSON,
    INT32_RANGE,
    INT64_RANGE,
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

__all__ = [
    "AVRO_JSON_BOUNDS",
    "DEMO_SCHEMAS_DIR",
    "CompiledSchema",
    "SchemaRegistry",
    "compile_schema",
    "load_registry",
]

DEMO_SCHEMAS_DIR = Path(__file__).parent / "demo"
SEGMENT_SCHEMAS_DIR = Path(__file__).parent / "segment"
SNOWPLOW_SCHEMAS_DIR = Path(__file__).parent / "snowplow"
_FLOAT32_MAX = 3.4028234663852886e38
_AWARE_DATETIME = Annotated[datetime.datetime, Meta(tz=True)]
_SCALARS: dict[tuple[str, str | None], Any] = {
    ("null", None): None,
    ("boolean", None): bool,
    ("int", None): Annotated[int, Meta(ge=INT32_RANGE[0], le=INT32_RANGE[1])],
    ("long", None): Annotated[int, Meta(ge=INT64_RANGE[0], le=INT64_RANGE[1])],
    ("float", None): Annotated[float, Meta(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)],
    ("double", None): float,
    ("string", None): str,
    ("bytes", None): bytes,
    ("long", "timestamp-millis"): _AWARE_DATETIME,
    ("long", "timestamp-micros"): _AWARE_DATETIME,
    ("string", "uuid"): uuid.UUID,
    ("int", "date"): datetime.date,
}

# Avro's JSON encoding of the logical types: epoch integers, within what Python's
# datetime/date can hold (0001-01-01 to 9999-12-31), so the conversion never fails.
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_DAY = datetime.date(1970, 1, 1)
_MIN_US = (datetime.datetime(1, 1, 1, tzinfo=datetime.UTC) - _EPOCH) // datetime.timedelta(
    microseconds=1
)
_MAX_US = (
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC) - _EPOCH
) // datetime.timedelta(microseconds=1)
# The epoch integers each logical type accepts in Avro JSON (also in the OpenAPI document).
AVRO_JSON_BOUNDS: dict[str, tuple[int, int]] = {
    "timestamp-millis": (-(-_MIN_US // 1000), _MAX_US // 1000),
    "timestamp-micros": (_MIN_US, _MAX_US),
    "date": ((datetime.date.min - _EPOCH_DAY).days, (datetime.date.max - _EPOCH_DAY).days),
}


def _epoch_int(logical: str) -> Any:
    low, high = AVRO_JSON_BOUNDS[logical]
    return Annotated[int, Meta(ge=low, le=high)]


_AVRO_JSON: dict[tuple[str, str | None], Any] = {
    **_SCALARS,
    ("long", "timestamp-millis"): _AWARE_DATETIME | _epoch_int("timestamp-millis"),
    ("long", "timestamp-micros"): _AWARE_DATETIME | _epoch_int("timestamp-micros"),
    ("int", "date"): datetime.date | _epoch_int("date"),
}

Fix = Callable[[Any], Any]


def _from_int(convert: Callable[[int], Any]) -> Fix:
    """``convert`` for the integers of an ``int | datetime`` (or ``date``) value."""
    return lambda value: convert(value) if type(value) is int else value


class _Compiler:
    """Maps parsed nodes to msgspec annotations; one Struct per named record."""

    def __init__(self, location: str, scalars: dict[tuple[str, str | None], Any]) -> None:
        self.location = location
        self.scalars = scalars
        self.structs: dict[str, type[msgspec.Struct]] = {}

    def annotation(self, node: Node) -> Any:
        match node:
            case Primitive(type=kind, logical=logical):
                return self.scalars[kind, logical]
            case Fixed(size=size):
                return Annotated[bytes, Meta(min_length=size, max_length=size)]
            case Enum(symbols=symbols):
                return Literal[symbols]
            case Array(items=items):
                return list[self.annotation(items)]  # type: ignore[misc]
            case Map(values=values):
                return dict[str, self.annotation(values)]  # type: ignore[misc]
            case Nullable(inner=inner):
                return Optional[self.annotation(inner)]
            case Record():
                return self.struct(node)
        raise AssertionError(node)  # pragma: no cover

    def struct(self, record: Record) -> type[msgspec.Struct]:
        if record.name in self.structs:
            return self.structs[record.name]
        fields: list[tuple[str, Any, Any]] = []
        for f, attr in zip(record.fields, _attributes(record), strict=True):
            ann = self.annotation(f.type)
            fields.append((attr, ann, self.field_spec(f, ann)))
        struct = msgspec.defstruct(
            record.name.rpartition(".")[2],
            fields,
            kw_only=True,
            forbid_unknown_fields=True,
            module=__name__,
        )
        self.structs[record.name] = struct
        return struct

    def field_spec(self, f: Field, ann: Any) -> Any:
        if f.default is NO_DEFAULT:
            return msgspec.field(name=f.name)
        try:
            value = msgspec.convert(f.default, ann)
        except msgspec.ValidationError as exc:
            raise SchemaError(
                f"{self.location}: field '{f.path}': default does not fit: {exc}"
            ) from None
        if isinstance(value, list | dict | msgspec.Struct):
            return msgspec.field(
                name=f.name, default_factory=functools.partial(msgspec.convert, f.default, ann)
            )
        return msgspec.field(name=f.name, default=value)


def _attributes(record: Record) -> list[str]:
    """Each field's Python attribute name: its own, or with ``_`` added for a keyword."""
    taken = {f.name for f in record.fields}
    names = []
    for f in record.fields:
        attr = f.name
        if keyword.iskeyword(attr):
            while attr in taken:
                attr += "_"
            taken.add(attr)
        names.append(attr)
    return names


def _fixer(node: Node) -> Fix | None:
    """A function that turns a decoded ``avro_json_type`` value canonical, or None
    when ``node`` holds no logical type that Avro JSON encodes as a number."""
    match node:
        case Primitive(logical=logical) if logical in FROM_AVRO_JSON:
            return _from_int(FROM_AVRO_JSON[logical])
        case Nullable(inner=inner):
            return _lifted(_fixer(inner), lambda f, v: None if v is None else f(v))
        case Array(items=items):
            return _lifted(_fixer(items), lambda f, v: [f(x) for x in v])
        case Map(values=values):
            return _lifted(_fixer(values), lambda f, v: {k: f(x) for k, x in v.items()})
        case Record():
            return _record_fixer(node)
    return None


def _lifted(inner: Fix | None, apply: Callable[[Fix, Any], Any]) -> Fix | None:
    """``inner`` applied through a container (``apply``), or None if nothing to fix."""
    if inner is None:
        return None
    return lambda value: apply(inner, value)


def _record_fixer(record: Record) -> Fix | None:
    steps = [
        (attr, fix)
        for f, attr in zip(record.fields, _attributes(record), strict=True)
        if (fix := _fixer(f.type)) is not None
    ]
    if not steps:
        return None

    def fix_record(value: Any) -> Any:
        for attr, step in steps:
            setattr(value, attr, step(getattr(value, attr)))
        return value

    return fix_record


@dataclass(frozen=True, slots=True, eq=False)
class CompiledSchema:
    """One event type: its Avro source and the Struct types that validate ``data``.

    ``avro_json_type`` is ``data_type`` itself when the schema has no timestamp or
    date; otherwise ``to_canonical`` makes a decoded value of it canonical in place.
    """

    type_name: str
    path: Path | None
    avro: dict[str, Any] = field(repr=False)
    data_type: type[msgspec.Struct] = field(repr=False)
    avro_json_type: type[msgspec.Struct] = field(repr=False)
    to_canonical: Fix | None = field(default=None, repr=False)


def compile_schema(avsc: dict[str, Any], *, path: Path | None = None) -> CompiledSchema:
    """Compile one ``.avsc`` document; SchemaError names the file and field on failure."""
    location = str(path) if path is not None else "<schema>"
    record = parse_schema(avsc, location=location)
    data_type = _Compiler(location, _SCALARS).struct(record)
    to_canonical = _record_fixer(record)
    avro_json_type = (
        data_type if to_canonical is None else _Compiler(location, _AVRO_JSON).struct(record)
    )
    return CompiledSchema(
        type_name=record.name,
        path=path,
        avro=avsc,
        data_type=data_type,
        avro_json_type=avro_json_type,
        to_canonical=to_canonical,
    )


def _load_file(path: Path) -> CompiledSchema:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read: {exc}") from exc
    try:
        avsc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
    return compile_schema(avsc, path=path)


class SchemaRegistry:
    """The compiled schemas of a deployment, looked up by CloudEvents ``type``.

    Built once at start-up and then only read, so it is safe to share between tasks.
    """

    __slots__ = ("_schemas",)

    def __init__(self, schemas: dict[str, CompiledSchema]) -> None:
        self._schemas = schemas

    @classmethod
    def load(cls, directory: Path) -> SchemaRegistry:
        """Compile every ``*.avsc`` directly in ``directory`` (subfolders are not read)."""
        if not directory.is_dir():
            raise ConfigError(f"{directory}: schemas folder does not exist")
        files = sorted(p for p in directory.glob("*.avsc") if p.is_file())
        if not files:
            raise ConfigError(f"{directory}: no .avsc files in the schemas folder")
        return cls.from_schemas(_load_file(p) for p in files)

    @classmethod
    def from_schemas(cls, schemas: Iterable[CompiledSchema]) -> SchemaRegistry:
        """Index already compiled schemas; two with one type name are a SchemaError."""
        by_name: dict[str, CompiledSchema] = {}
        for schema in schemas:
            if (first := by_name.get(schema.type_name)) is not None:
                raise SchemaError(
                    f"{schema.path or '<schema>'}: type '{schema.type_name}' is already "
                    f"defined in {first.path or '<schema>'}"
                )
            by_name[schema.type_name] = schema
        return cls(by_name)

    def __getitem__(self, type_name: str) -> CompiledSchema:
        return self._schemas[type_name]

    def __contains__(self, type_name: object) -> bool:
        return isinstance(type_name, str) and type_name in self._schemas

    def __iter__(self) -> Iterator[CompiledSchema]:
        return iter(self._schemas.values())

    def __len__(self) -> int:
        return len(self._schemas)

    @property
    def type_names(self) -> list[str]:
        return sorted(self._schemas)


def load_registry(settings: Settings) -> SchemaRegistry:
    """The registry of ``--schemas`` (or the bundled demo schemas), with the types of
    the analytics protocols that are on (``segment``, ``snowplow``)."""
    own = SchemaRegistry.load(Path(settings.schemas) if settings.schemas else DEMO_SCHEMAS_DIR)
    extra = [
        d
        for on, d in (
            (settings.segment, SEGMENT_SCHEMAS_DIR),
            (settings.snowplow, SNOWPLOW_SCHEMAS_DIR),
        )
        if on
    ]
    registry = own
    if extra:
        registry = SchemaRegistry.from_schemas(
            [*own, *(s for d in extra for s in SchemaRegistry.load(d))]
        )
    settings.check_type_names(registry.type_names)
    return registry
