"""Compile Avro record schemas into msgspec types, and hold them by event type.

Every event's ``data`` is validated against the schema of its CloudEvents ``type``.
That has to cost no Python per event, so each ``.avsc`` is turned once, at start-up,
into nested ``msgspec.Struct`` types: ``msgspec.json.decode(data, type=data_type)``
is then the whole validation and runs in C, and its error names the JSON path
(`` - at `$.device.platform` ``). Records forbid unknown fields, ints carry their
int32/int64 range, enums become ``Literal`` types, timestamps must carry an offset.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import msgspec
from msgspec import Meta

from hourglass.exceptions import ConfigError, SchemaError
from hourglass.schemas.parse import (
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
    "DEMO_SCHEMAS_DIR",
    "CompiledSchema",
    "SchemaRegistry",
    "compile_schema",
]

DEMO_SCHEMAS_DIR = Path(__file__).parent / "demo"
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


class _Compiler:
    """Maps parsed nodes to msgspec annotations; one Struct per named record."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.structs: dict[str, type[msgspec.Struct]] = {}

    def annotation(self, node: Node) -> Any:
        match node:
            case Primitive(type=kind, logical=logical):
                return _SCALARS[kind, logical]
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
        taken = {f.name for f in record.fields}
        fields: list[tuple[str, Any, Any]] = []
        for f in record.fields:
            attr = f.name
            if keyword.iskeyword(attr):
                while attr in taken:
                    attr += "_"
                taken.add(attr)
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


@dataclass(frozen=True, slots=True, eq=False)
class CompiledSchema:
    """One event type: its Avro source and the Struct type that validates ``data``."""

    type_name: str
    path: Path | None
    avro: dict[str, Any] = field(repr=False)
    data_type: type[msgspec.Struct] = field(repr=False)


def compile_schema(avsc: dict[str, Any], *, path: Path | None = None) -> CompiledSchema:
    """Compile one ``.avsc`` document; SchemaError names the file and field on failure."""
    location = str(path) if path is not None else "<schema>"
    record = parse_schema(avsc, location=location)
    data_type = _Compiler(location).struct(record)
    return CompiledSchema(type_name=record.name, path=path, avro=avsc, data_type=data_type)


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
