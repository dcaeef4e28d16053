"""Backward compatibility: can a reader with the NEW schema read events of the OLD one?"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from hourglass.exceptions import SchemaError
from hourglass.schemas import DEMO_SCHEMAS_DIR, check_compatibility


def record(*fields: dict[str, Any], name: str = "A", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "music", "fields": list(fields), **extra}


def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Reason", "symbols": list(symbols), **extra}


def f(name: str, avro_type: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": avro_type, **extra}


BASE = record(f("track_id", "string"), f("reason", "string"))


def test_identical_schemas_are_compatible() -> None:
    assert check_compatibility(BASE, BASE) == []
    for path in DEMO_SCHEMAS_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        assert check_compatibility(schema, copy.deepcopy(schema)) == []


def test_added_field_needs_a_default() -> None:
    new = record(*BASE["fields"], f("duration_ms", "long"))
    assert check_compatibility(BASE, new) == [
        "field 'duration_ms' was added without a default: "
        "events written with the old schema lack it"
    ]
    with_default = record(*BASE["fields"], f("duration_ms", "long", default=0))
    nullable = record(*BASE["fields"], f("ctx", ["null", "string"], default=None))
    assert check_compatibility(BASE, with_default) == []
    assert check_compatibility(BASE, nullable) == []


def test_removed_field_is_compatible() -> None:
    """The new reader simply ignores a field old events still carry."""
    assert check_compatibility(BASE, record(f("track_id", "string"))) == []


def test_type_change_is_reported() -> None:
    new = record(f("track_id", "string"), f("reason", "int"))
    assert check_compatibility(BASE, new) == ["field 'reason' changed type from string to int"]
    to_array = record(f("track_id", "string"), f("reason", {"type": "array", "items": "string"}))
    assert check_compatibility(BASE, to_array) == [
        "field 'reason' changed type from string to array<string>"
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"),
     ("long", "double"), ("float", "double"), ("string", "bytes"), ("bytes", "string")],
)  # fmt: skip
def test_promotions_are_compatible(old: str, new: str) -> None:
    assert check_compatibility(record(f("x", old)), record(f("x", new))) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [("long", "int"), ("double", "float"), ("float", "long"), ("string", "int"),
     ("boolean", "int")],
)  # fmt: skip
def test_narrowing_is_incompatible(old: str, new: str) -> None:
    assert check_compatibility(record(f("x", old)), record(f("x", new))) == [
        f"field 'x' changed type from {old} to {new}"
    ]


def test_nullability() -> None:
    plain, nullable = record(f("x", "string")), record(f("x", ["null", "string"], default=None))
    assert check_compatibility(plain, nullable) == []
    assert check_compatibility(nullable, plain) == [
        "field 'x' is no longer nullable: old events may carry null"
    ]
    assert (
        check_compatibility(record(f("x", ["null", "int"])), record(f("x", ["long", "null"]))) == []
    )


def test_logical_types() -> None:
    millis = {"type": "long", "logicalType": "timestamp-millis"}
    micros = {"type": "long", "logicalType": "timestamp-micros"}
    assert check_compatibility(record(f("t", millis)), record(f("t", "long"))) == []
    assert check_compatibility(record(f("t", millis)), record(f("t", micros))) == [
        "field 't' changed type from long (timestamp-millis) to long (timestamp-micros): "
        "the stored values would change meaning"
    ]
    uuid_type = {"type": "string", "logicalType": "uuid"}
    assert len(check_compatibility(record(f("u", "string")), record(f("u", uuid_type)))) == 1


def test_enum_symbols() -> None:
    old = record(f("reason", enum("DONE", "TIMEOUT")))
    added = record(f("reason", enum("DONE", "TIMEOUT", "ERROR")))
    removed = record(f("reason", enum("DONE")))
    assert check_compatibility(old, added) == []
    assert check_compatibility(old, removed) == [
        "enum 'Reason' lost symbol 'TIMEOUT': old events may carry it"
    ]
    with_default = record(f("reason", enum("DONE", "UNKNOWN", default="UNKNOWN")))
    assert check_compatibility(old, with_default) == []
    renamed = record(f("reason", {**enum("DONE", "TIMEOUT"), "name": "Why"}))
    assert check_compatibility(old, renamed) == [
        "field 'reason': enum name changed from music.Reason to music.Why"
    ]


def test_nested_record_changes_use_dotted_paths() -> None:
    def device(*fields: dict[str, Any]) -> dict[str, Any]:
        return record(f("device", record(*fields, name="Device")))

    old = device(f("os", "string"), f("model", "string"))
    new = device(f("os", "int"), f("app", "string"))
    assert check_compatibility(old, new) == [
        "field 'device.os' changed type from string to int",
        "field 'device.app' was added without a default: "
        "events written with the old schema lack it",
    ]
    inner = record(f("os", "string"), name="Device")
    in_array = record(f("devices", {"type": "array", "items": inner}))
    new_inner = record(f("os", "string"), f("v", "int"), name="Device")
    new_array = record(f("devices", {"type": "array", "items": new_inner}))
    assert check_compatibility(in_array, new_array) == [
        "field 'devices[].v' was added without a default: "
        "events written with the old schema lack it"
    ]
    in_map = record(f("m", {"type": "map", "values": "int"}))
    new_map = record(f("m", {"type": "map", "values": "string"}))
    assert check_compatibility(in_map, new_map) == ["field 'm{}' changed type from int to string"]


def test_record_name_changes() -> None:
    assert check_compatibility(record(name="A"), record(name="B")) == [
        "record name changed from music.A to music.B"
    ]
    assert check_compatibility(record(name="A"), record(name="B", aliases=["A"])) == []
    old = record(f("d", record(name="Device")))
    new = record(f("d", record(name="Gadget")))
    assert check_compatibility(old, new) == [
        "field 'd': record name changed from music.Device to music.Gadget"
    ]


def test_renamed_field_through_aliases() -> None:
    new = record(f("track_id", "string"), f("why", "string", aliases=["reason"]))
    assert check_compatibility(BASE, new) == []


def test_fixed_size_change() -> None:
    old = record(f("h", {"type": "fixed", "name": "Hash", "size": 16}))
    new = record(f("h", {"type": "fixed", "name": "Hash", "size": 8}))
    assert check_compatibility(old, new) == ["fixed 'music.Hash' changed size from 16 to 8"]


def test_invalid_schema_raises() -> None:
    with pytest.raises(SchemaError, match=r"^new schema: field 'x': unions other than"):
        check_compatibility(BASE, record(f("x", ["int", "string"])))
