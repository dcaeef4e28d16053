"""Avro → msgspec compilation, the schema registry, and the bundled demo schemas."""

from __future__ import annotations

import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.exceptions import ConfigError, SchemaError
from hourglass.schemas import (
    DEMO_SCHEMAS_DIR,
    CompiledSchema,
    SchemaRegistry,
    compile_schema,
)
from hourglass.schemas.parse import NO_DEFAULT, Array, Nullable, parse_schema
from tests.strategies import valid_data

LOC = Path("/schemas/bad.avsc")
UUID = "c9bf9e57-1685-4c89-bafb-ff5af830be8a"


def record(*fields: dict[str, Any], name: str = "T", ns: str = "t") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": ns, "fields": list(fields)}


def one(avro_type: Any, **extra: Any) -> CompiledSchema:
    return compile_schema(record({"name": "f", "type": avro_type, **extra}), path=LOC)


def decode(schema: CompiledSchema, data: Any) -> Any:
    return msgspec.json.decode(json.dumps(data), type=schema.data_type)


def rejects(schema: CompiledSchema, data: Any, *fragments: str) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        decode(schema, data)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    return message


TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
TS_MICROS = {"type": "long", "logicalType": "timestamp-micros"}
UUID_T = {"type": "string", "logicalType": "uuid"}
DATE_T = {"type": "int", "logicalType": "date"}
ENUM_T = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
FIXED2 = {"type": "fixed", "name": "F", "size": 2}
MAP_INT = {"type": "map", "values": "int"}

FEATURES = [
    ("int", [0, 2**31 - 1, -(2**31)], [2**31, -(2**31) - 1, 1.5, "1", True]),
    ("long", [2**63 - 1, -(2**63)], [2**63, -(2**63) - 1, "1", None]),
    ("float", [1.5, 3, -3.4e38], [3.5e38, "1.5", None]),
    ("double", [1.5, 1e300, 0], ["x", None, [1.0]]),
    ("boolean", [True, False], [1, "true", None]),
    ("string", ["", "héllo"], [1, None, ["a"]]),
    ("bytes", ["", "AAE="], ["not base64!", 1]),
    ({"type": "fixed", "name": "Two", "size": 2}, ["AAE="], ["AA==", "AAEC"]),
    (ENUM_T, ["RED", "GREEN"], ["BLUE", "red", 0]),
    ({"type": "array", "items": "int"}, [[], [1, 2]], [[1, "2"], {"a": 1}, "x"]),
    ({"type": "map", "values": "int"}, [{}, {"a": 1}], [{"a": "x"}, [1]]),
    (["null", "string"], [None, "x"], [1, ["x"]]),
    (["string", "null"], [None, "x"], [1]),
    (TS_MILLIS, ["2024-05-01T12:00:00.123Z", "2024-05-01T14:00:00+02:00"],
     ["2024-05-01T12:00:00", "2024-05-01", 1714564800000, "yesterday"]),
    (TS_MICROS, ["2024-05-01T12:00:00.123456Z"], ["2024-05-01T12:00:00.123456"]),
    (UUID_T, [UUID, UUID.replace("-", "")], ["c9bf9e57", "not-a-uuid", 1]),
    (DATE_T, ["2024-02-29"], ["2023-02-29", "2024-02-29T00:00:00Z", 19782]),
]  # fmt: skip


@pytest.mark.parametrize(("avro_type", "good", "bad"), FEATURES, ids=str)
def test_feature_accepts_valid_and_rejects_invalid(
    avro_type: Any, good: list[Any], bad: list[Any]
) -> None:
    schema = one(avro_type)
    for value in good:
        decode(schema, {"f": value})
    for value in bad:
        rejects(schema, {"f": value}, "- at `$.f")


def test_decoded_python_types() -> None:
    schema = compile_schema(
        record(
            {"name": "ts", "type": TS_MILLIS},
            {"name": "id", "type": UUID_T},
            {"name": "day", "type": DATE_T},
            {"name": "raw", "type": "bytes"},
        )
    )
    data = {"ts": "2024-05-01T14:00:00+02:00", "id": UUID, "day": "2024-02-29", "raw": "AAE="}
    value = decode(schema, data)
    assert value.ts == datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC)
    assert value.id == uuid.UUID(UUID)
    assert value.day == datetime.date(2024, 2, 29)
    assert value.raw == b"\x00\x01"


def test_bounds_messages_name_the_limit() -> None:
    rejects(one("int"), {"f": 2**31}, "<= 2147483647", "`$.f`")
    rejects(one("long"), {"f": -(2**63) - 1}, ">= -9223372036854775808")


def test_missing_unknown_and_enum_errors() -> None:
    schema = compile_schema(record({"name": "a", "type": "int"}, {"name": "c", "type": ENUM_T}))
    rejects(schema, {"c": "RED"}, "missing required field `a`")
    rejects(schema, {"a": 1, "c": "RED", "zz": 1}, "unknown field `zz`")
    rejects(schema, {"a": 1, "c": "BLUE"}, "'BLUE'", "`$.c`")
    rejects(schema, [1, "RED"], "Expected `object`")


def test_nested_paths_in_errors() -> None:
    inner = record({"name": "os", "type": "string"}, name="Device")
    schema = compile_schema(
        record(
            {"name": "device", "type": inner},
            {"name": "devices", "type": {"type": "array", "items": "Device"}},
            {"name": "tags", "type": {"type": "map", "values": "Device"}},
        )
    )
    ok = {"device": {"os": "ios"}, "devices": [], "tags": {}}
    assert decode(schema, ok).device.os == "ios"
    rejects(schema, {**ok, "device": {"os": 1}}, "`$.device.os`")
    rejects(schema, {**ok, "device": {"os": "x", "v": 1}}, "unknown field `v`", "`$.device`")
    rejects(schema, {**ok, "devices": [{"os": "a"}, {}]}, "`os`", "`$.devices[1]`")
    rejects(schema, {**ok, "tags": {"k": {"os": 2}}}, "`$.tags[...].os`")


def test_defaults() -> None:
    tags = {"type": "array", "items": "string"}
    point = record(
        {"name": "x", "type": "int"}, {"name": "y", "type": "int", "default": 7}, name="P"
    )
    schema = compile_schema(
        record(
            {"name": "opt", "type": ["null", "string"], "default": None},
            {"name": "opt2", "type": ["string", "null"], "default": "dflt"},
            {"name": "n", "type": "long", "default": 5},
            {"name": "tags", "type": tags, "default": ["a"]},
            {"name": "m", "type": {"type": "map", "values": "int"}, "default": {}},
            {"name": "p", "type": point, "default": {"x": 1}},
            {"name": "raw", "type": "bytes", "default": "\u0000\u00ff"},
            {"name": "ts", "type": TS_MILLIS, "default": 1500},
            {"name": "ts2", "type": TS_MICROS, "default": 1500},
            {"name": "day", "type": DATE_T, "default": 1},
            {"name": "id", "type": UUID_T, "default": UUID},
            {"name": "c", "type": ENUM_T, "default": "GREEN"},
            {"name": "flag", "type": "boolean", "default": False},
            {"name": "ratio", "type": "double", "default": 1},
        )
    )
    a, b = decode(schema, {}), decode(schema, {})
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    assert (a.opt, a.opt2, a.n, a.tags, a.m) == (None, "dflt", 5, ["a"], {})
    assert (a.p.x, a.p.y, a.raw) == (1, 7, b"\x00\xff")
    assert a.ts == epoch + datetime.timedelta(milliseconds=1500)
    assert a.ts2 == epoch + datetime.timedelta(microseconds=1500)
    assert (a.day, a.id, a.c, a.flag, a.ratio) == (
        datetime.date(1970, 1, 2),
        uuid.UUID(UUID),
        "GREEN",
        False,
        1.0,
    )
    assert a.tags is not b.tags and a.p is not b.p  # fresh mutable defaults per event
    assert decode(schema, {"opt": "x", "n": 6}).n == 6


def test_named_types_are_reused_by_short_and_full_name() -> None:
    schema = compile_schema(
        record(
            {"name": "a", "type": ENUM_T},
            {"name": "b", "type": "Color"},
            {"name": "c", "type": "t.Color"},
            {"name": "d", "type": {"type": "record", "name": "O", "namespace": "other",
                                   "fields": [{"name": "e", "type": "t.Color"}]}},
            {"name": "f", "type": "other.O"},
        )
    )  # fmt: skip
    value = decode(
        schema, {"a": "RED", "b": "RED", "c": "GREEN", "d": {"e": "RED"}, "f": {"e": "RED"}}
    )
    assert type(value.d) is type(value.f)
    rejects(
        schema, {"a": "RED", "b": "X", "c": "RED", "d": {"e": "RED"}, "f": {"e": "RED"}}, "`$.b`"
    )


def test_no_namespace_type_name_and_dotted_name() -> None:
    assert compile_schema({"type": "record", "name": "Plain", "fields": []}).type_name == "Plain"
    dotted = {"type": "record", "name": "a.b.C", "namespace": "ignored", "fields": []}
    assert compile_schema(dotted).type_name == "a.b.C"


def test_keyword_field_names_keep_their_json_name() -> None:
    schema = compile_schema(
        record({"name": "class", "type": "int"}, {"name": "class_", "type": "int"})
    )
    value = decode(schema, {"class": 1, "class_": 2})
    assert (value.class__, value.class_) == (1, 2)
    assert msgspec.json.decode(msgspec.json.encode(value)) == {"class": 1, "class_": 2}
    rejects(schema, {"class": "x", "class_": 2}, "`$.class`")


def test_null_type_field() -> None:
    schema = one("null", default=None)
    assert decode(schema, {}).f is None
    rejects(schema, {"f": 0}, "`$.f`")


def test_unknown_logical_type_falls_back_to_underlying_type() -> None:
    schema = one({"type": "string", "logicalType": "iso-country"})
    assert decode(schema, {"f": "SE"}).f == "SE"


_FIELD = "/schemas/bad.avsc: field '{}': "
UNSUPPORTED = [
    (["int", "string"], "f", 'unions other than ["null", T] are not supported'),
    (["null", "int", "string"], "f", "unions other than"),
    (["null"], "f", "unions other than"),
    (["null", "null"], "f", "unions other than"),
    ({"type": "bytes", "logicalType": "decimal"}, "f", "logicalType 'decimal' is not supported"),
    ({"type": "int", "logicalType": "time-millis"}, "f", "logicalType 'time-millis'"),
    ({"type": "long", "logicalType": "local-timestamp-millis"}, "f", "'local-timestamp-millis'"),
    ({"type": "fixed", "name": "D", "size": 12, "logicalType": "duration"}, "f", "'duration'"),
    ({"type": "int", "logicalType": "uuid"}, "f", "'uuid' must annotate string, not int"),
    ({"type": "array", "items": ["int", "string"]}, "f[]", "unions other than"),
    ({"type": "map", "values": {"type": "int", "logicalType": "time-millis"}}, "f{}", "time-"),
    ("Nope", "f", "unknown type 'Nope'"),
    ({"type": "array"}, "f", "array needs 'items'"),
    ({"type": "map"}, "f", "map needs 'values'"),
    ({"type": "fixed", "name": "F"}, "f", "needs an integer 'size' in [0, 2**31)"),
    ({"type": "enum", "name": "E", "symbols": ["A", "A"]}, "f", "duplicate symbols"),
    ({"type": "enum", "name": "E", "symbols": ["A-B"]}, "f", "invalid symbol 'A-B'"),
    ({"type": "enum", "name": "E", "symbols": []}, "f", "non-empty 'symbols'"),
    ({"type": "enum", "name": "E", "symbols": ["A"], "default": "B"}, "f", "'B' is not one of"),
    ({"type": "enum", "symbols": ["A"]}, "f", "enum has no 'name'"),
    ({"type": "record", "name": "bad-name", "fields": []}, "f", "invalid name 't.bad-name'"),
    ({"type": "record", "name": "R"}, "f", "record 't.R' has no 'fields' list"),
    (record({"name": "x", "type": "R"}, name="R"), "f.x", "recursive records are not supported"),
    (record({"name": "x", "type": ["null", "t.R"]}, name="R"), "f.x", "recursive"),
    ({"type": "record", "name": "T", "fields": []}, "f", "type 't.T' is defined twice"),
    (record({"name": "in", "type": "Nope"}, name="R"), "f.in", "unknown type"),
    ({"type": "record", "name": "R", "fields": [{"name": "x"}]}, "f.x", "has no 'type'"),
    ({"type": "record", "name": "R", "fields": [{"type": "int"}]}, "f", "field without a 'name'"),
    ({"type": "frobnicate"}, "f", "unknown type 'frobnicate'"),
    (17, "f", "invalid type 17"),
]  # fmt: skip


@pytest.mark.parametrize(("avro_type", "path", "reason"), UNSUPPORTED, ids=str)
def test_unsupported_constructs_name_file_and_field(avro_type: Any, path: str, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        one(avro_type)
    assert str(info.value).startswith(_FIELD.format(path))
    assert reason in str(info.value)


BAD_FIELDS = [
    ({"name": "my-field", "type": "int"}, "my-field", "invalid name"),
    ({"name": "__x", "type": "int"}, "__x", "names starting with '__' are not supported"),
    ({"name": "f", "type": "int", "default": "x"}, "f", "default 'x' does not match type int"),
    ({"name": "f", "type": "int", "default": 2**31}, "f", "integer in [-2147483648, 2147483647]"),
    ({"name": "f", "type": "int", "default": True}, "f", "does not match"),
    ({"name": "f", "type": "string", "default": None}, "f", "expected a string"),
    ({"name": "f", "type": ["null", "int"], "default": "x"}, "f", 'match type ["null", int]'),
    ({"name": "f", "type": "bytes", "default": "\u20ac"}, "f", "code points 0-255"),
    ({"name": "f", "type": FIXED2, "default": "a"}, "f", "expected 2 bytes"),
    ({"name": "f", "type": ENUM_T, "default": "BLUE"}, "f", "expected one of RED, GREEN"),
    ({"name": "f", "type": UUID_T, "default": "nope"}, "f", "not a valid uuid"),
    ({"name": "f", "type": DATE_T, "default": 2**30}, "f", "representable date range"),
    ({"name": "f", "type": {"type": "array", "items": "int"}, "default": ["a"]}, "f", "array<int>"),
    ({"name": "f", "type": MAP_INT, "default": []}, "f", "expected an object"),
    ({"name": "f", "type": "float", "default": 1e39}, "f", "does not fit: Expected `float`"),
    ({"name": "f", "type": "null", "default": 0}, "f", "expected null"),
    ({"name": "f", "type": record({"name": "x", "type": "int"}, name="P"), "default": {}}, "f",
     "missing field 'x'"),
    ({"name": "f", "type": record(name="P"), "default": {"y": 1}}, "f", "unknown field 'y'"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "path", "reason"), BAD_FIELDS, ids=str)
def test_bad_fields_and_defaults(field: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        compile_schema(record(field), path=LOC)
    assert str(info.value).startswith(_FIELD.format(path))
    assert reason in str(info.value)


def test_nested_field_path_in_errors() -> None:
    inner = record({"name": "inner", "type": ["int", "string"]}, name="I")
    with pytest.raises(SchemaError, match=r"^/schemas/bad.avsc: field 'outer.inner': unions"):
        compile_schema(record({"name": "outer", "type": inner}), path=LOC)


def test_duplicate_field_and_top_level_errors() -> None:
    dup = record({"name": "a", "type": "int"}, {"name": "a", "type": "int"})
    with pytest.raises(SchemaError, match=r"field 'a': defined twice"):
        compile_schema(dup, path=LOC)
    for top, kind in [
        ({"type": "enum", "name": "E", "symbols": ["A"]}, "'enum'"),
        ("int", "'str'"),
    ]:
        with pytest.raises(
            SchemaError, match=rf"^/schemas/bad.avsc: top-level type must be a record, got {kind}"
        ):
            compile_schema(top, path=LOC)  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=r"^<schema>: record has no 'name'"):
        compile_schema({"type": "record", "fields": []})


# --- registry -----------------------------------------------------------------------

DEMO_TYPES = ["music.AdImpression", "music.PlaybackStarted", "music.PlaybackStopped",
              "music.SearchPerformed", "music.SongSkipped"]  # fmt: skip


def test_registry_loads_demo_folder() -> None:
    registry = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
    assert registry.type_names == DEMO_TYPES
    assert len(registry) == len(list(registry)) == 5
    assert "music.SongSkipped" in registry and "music.Nope" not in registry and 3 not in registry
    schema = registry["music.SongSkipped"]
    assert schema.path == DEMO_SCHEMAS_DIR / "SongSkipped.avsc"
    assert schema.avro["name"] == "SongSkipped"
    with pytest.raises(KeyError):
        registry["music.Nope"]


def write(folder: Path, name: str, content: Any) -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_registry_reports_broken_file(tmp_path: Path) -> None:
    write(tmp_path, "good.avsc", record(name="Good"))
    bad = write(tmp_path, "broken.avsc", '{"type": "record",')
    with pytest.raises(SchemaError, match=rf"^{bad}: not valid JSON"):
        SchemaRegistry.load(tmp_path)
    write(tmp_path, "broken.avsc", {"type": "enum", "name": "E", "symbols": ["A"]})
    with pytest.raises(SchemaError, match=rf"^{bad}: top-level type must be a record"):
        SchemaRegistry.load(tmp_path)
    write(tmp_path, "broken.avsc", record({"name": "u", "type": ["int", "string"]}))
    with pytest.raises(SchemaError, match=rf"^{bad}: field 'u': unions"):
        SchemaRegistry.load(tmp_path)


def test_registry_rejects_duplicate_type_names(tmp_path: Path) -> None:
    first = write(tmp_path, "a.avsc", record(name="Same"))
    second = write(tmp_path, "b.avsc", record(name="Same"))
    with pytest.raises(
        SchemaError, match=rf"^{second}: type 't.Same' is already defined in {first}"
    ):
        SchemaRegistry.load(tmp_path)
    schema = compile_schema(record(name="Same"))
    with pytest.raises(SchemaError, match=r"type 't.Same' is already defined"):
        SchemaRegistry.from_schemas([schema, schema])


def test_registry_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SchemaRegistry.load(tmp_path / "missing")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "x.avsc", record(name="Deep"))
    write(tmp_path, "notes.txt", "not a schema")
    with pytest.raises(ConfigError, match=r"no \.avsc files"):
        SchemaRegistry.load(tmp_path)
    write(tmp_path, "top.avsc", record(name="Top"))
    assert SchemaRegistry.load(tmp_path).type_names == ["t.Top"]


def test_from_schemas() -> None:
    schemas = [compile_schema(record(name=n)) for n in ("B", "A")]
    registry = SchemaRegistry.from_schemas(schemas)
    assert registry.type_names == ["t.A", "t.B"]
    assert registry["t.A"] is schemas[1]


# --- every bundled schema against generated data -------------------------------------

DEMO = SchemaRegistry.load(DEMO_SCHEMAS_DIR)


def test_demo_schemas_use_every_supported_feature() -> None:
    text = " ".join(p.read_text() for p in DEMO_SCHEMAS_DIR.glob("*.avsc"))
    features = ['"int"', '"long"', '"float"', '"double"', '"boolean"', '"string"', '"bytes"',
                '"enum"', '"array"', '"map"', '"name": "Device"', '["null", "string"]',
                "timestamp-millis", "timestamp-micros", "uuid", '"date"',
                '"default": 0']  # fmt: skip
    for feature in features:
        assert feature in text, feature


@pytest.mark.parametrize("type_name", DEMO_TYPES)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_generated_data_is_accepted_and_mutations_rejected(
    type_name: str, data: st.DataObject
) -> None:
    schema = DEMO[type_name]
    tree = parse_schema(schema.avro)
    value = data.draw(valid_data(schema.avro), label="data")
    decode(schema, value)

    required = [f.name for f in tree.fields if f.default is NO_DEFAULT]
    name = data.draw(st.sampled_from(required), label="dropped")
    rejects(
        schema, {k: v for k, v in value.items() if k != name}, f"missing required field `{name}`"
    )

    field = data.draw(st.sampled_from([f for f in tree.fields if f.name in value]), label="wrong")
    inner = field.type.inner if isinstance(field.type, Nullable) else field.type
    wrong = "not-a-list" if isinstance(inner, Array) else [1]
    rejects(schema, {**value, field.name: wrong}, f"`$.{field.name}`")

    rejects(schema, {**value, "zz_unknown": 1}, "unknown field `zz_unknown`")


@pytest.mark.parametrize("type_name", DEMO_TYPES)
def test_demo_events_are_small(type_name: str) -> None:
    example = {
        "user_id": UUID, "track_id": "4uLU6hMCjMI75M1A2tKUQC",
        "ad_id": "ad-42017", "query": "daft punk", "result_count": 42,
        "latency_ms": 37.5, "played_ms": 183000, "position_ms": 5000, "volume": 0.8,
        "reason": "TRACK_DONE", "duration_ms": 30000, "price_micros": 2500,
        "campaign_day": "2024-05-01", "tracking_token": "q83vEjRWeJA=",
        "device": {"platform": "IOS", "app_version": "8.9.1"},
    }  # fmt: skip
    fields = {f.name for f in parse_schema(DEMO[type_name].avro).fields}
    event = {k: v for k, v in example.items() if k in fields}
    event |= {f: "2024-05-01T12:00:00.123Z" for f in fields if f.endswith("_at")}
    encoded = json.dumps(event, separators=(",", ":"))
    decode(DEMO[type_name], event)
    assert 100 <= len(encoded) <= 220, encoded
