"""Backward compatibility between two versions of an event schema.

The lake keeps events written under every past version of a schema, so a new
version must be able to read them: in Avro terms, a reader using the NEW schema
must resolve data written with the OLD one. The checks follow Avro's schema
resolution rules:

- a field added in the new schema needs a default (old events lack it);
- a removed field is fine: the new reader ignores it;
- a type may only be promoted: int→long→float→double, int→float/double,
  float→double, string↔bytes; a value may become nullable but not the reverse;
- an enum may gain symbols, and may lose one only if it has a ``default``;
- record, enum and fixed names must match, or the new name must list the old one in
  its ``aliases``; a renamed field is matched through the new field's ``aliases``.

One rule is stricter than Avro's: a ``logicalType`` the new schema adds or changes
(``long`` → ``timestamp-millis``, millis → micros, ``string`` → ``uuid``) is reported,
because it changes what the stored values mean (and their Parquet column type).
Dropping a logical type is fine.

Problems are plain English, with dotted field paths (``[]`` array items, ``{}`` map
values), e.g. ``field 'device.os' changed type from string to int``.
"""

from __future__ import annotations

from typing import Any

from hourglass.schemas.parse import (
    NO_DEFAULT,
    Array,
    Enum,
    Fixed,
    Map,
    Node,
    Nullable,
    Primitive,
    Record,
    describe,
    parse_schema,
)

__all__ = ["check_compatibility"]

_PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)


def check_compatibility(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """List why NEW cannot read events written with OLD; empty means compatible.

    Raises SchemaError if either document is not a valid, supported schema.
    """
    writer = parse_schema(old, location="old schema")
    reader = parse_schema(new, location="new schema")
    problems: list[str] = []
    _check(writer, reader, "", problems)
    return problems


def _check(writer: Node, reader: Node, path: str, problems: list[str]) -> None:
    where = f"field '{path}'" if path else "schema"
    if isinstance(writer, Nullable) and not isinstance(reader, Nullable):
        problems.append(f"{where} is no longer nullable: old events may carry null")
    writer = writer.inner if isinstance(writer, Nullable) else writer
    reader = reader.inner if isinstance(reader, Nullable) else reader

    match writer, reader:
        case Primitive(), Primitive():
            _check_primitive(writer, reader, where, problems)
        case Record(), Record():
            _check_name(writer.name, reader.name, reader.aliases, "record", path, problems)
            _check_fields(writer, reader, path, problems)
        case Enum(), Enum():
            _check_name(writer.name, reader.name, (), "enum", path, problems)
            if reader.default is None:
                short = reader.name.rpartition(".")[2]
                problems.extend(
                    f"enum '{short}' lost symbol '{symbol}': old events may carry it"
                    for symbol in writer.symbols
                    if symbol not in reader.symbols
                )
        case Fixed(), Fixed():
            _check_name(writer.name, reader.name, (), "fixed", path, problems)
            if writer.size != reader.size:
                problems.append(
                    f"fixed '{reader.name}' changed size from {writer.size} to {reader.size}"
                )
        case Array(), Array():
            _check(writer.items, reader.items, f"{path}[]", problems)
        case Map(), Map():
            _check(writer.values, reader.values, f"{path}{{}}", problems)
        case _:
            problems.append(f"{where} changed type from {describe(writer)} to {describe(reader)}")


def _check_primitive(writer: Primitive, reader: Primitive, where: str, problems: list[str]) -> None:
    if writer.type != reader.type and (writer.type, reader.type) not in _PROMOTIONS:
        problems.append(f"{where} changed type from {describe(writer)} to {describe(reader)}")
    elif reader.logical is not None and reader.logical != writer.logical:
        problems.append(
            f"{where} changed type from {describe(writer)} to {describe(reader)}: "
            "the stored values would change meaning"
        )


def _check_name(
    old: str,
    new: str,
    aliases: tuple[str, ...],
    kind: str,
    path: str,
    problems: list[str],
) -> None:
    if old != new and old not in aliases:
        where = f"field '{path}': " if path else ""
        problems.append(f"{where}{kind} name changed from {old} to {new}")


def _check_fields(writer: Record, reader: Record, path: str, problems: list[str]) -> None:
    old_fields = {f.name: f for f in writer.fields}
    for field in reader.fields:
        field_path = f"{path}.{field.name}" if path else field.name
        old = next(
            (old_fields[n] for n in (field.name, *field.aliases) if n in old_fields),
            None,
        )
        if old is not None:
            _check(old.type, field.type, field_path, problems)
        elif field.default is NO_DEFAULT:
            problems.append(
                f"field '{field_path}' was added without a default: "
                "events written with the old schema lack it"
            )
