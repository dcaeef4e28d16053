"""Property tests: the wire decoder and the schema compiler never fail in an unplanned way.

(a) The gateway's input path — ``decompress``, ``to_payload``, ``Validator.check`` —
    on arbitrary bytes, JSON values and headers raises nothing but the project's
    ``InvalidInput`` family, and a result names every rejected event (valid index,
    non-empty reason) while accepting every valid one.
(b) ``compile_schema`` on arbitrary Avro-like JSON either compiles or raises
    ``SchemaError`` naming the file; generated *valid* schemas compile, their
    ``valid_data`` values decode and round-trip, and the OpenAPI JSON Schema derived
    from them (``hourglass.gateway.openapi``) agrees with the compiled validator.

Bounded: ``deadline=None``, modest ``max_examples``, about 10 s in all.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hourglass.events import EventTypes
from hourglass.exceptions import BodyTooLarge, InvalidInput, SchemaError
from hourglass.gateway.openapi import event_schema, openapi_document
from hourglass.gateway.validate import Checked, EmptyBatch, Limits, Validator
from hourglass.gateway.wire import (
    BATCH,
    JSON,
    STRUCTURED,
    Mode,
    Payload,
    Unparseable,
    UnsupportedMediaType,
    decompress,
    to_payload,
)
from hourglass.schemas import DEMO_SCHEMAS_DIR, CompiledSchema, SchemaRegistry, compile_schema
from hourglass.schemas.jsonschema import data_schema
from tests.strategies import valid_data

REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
TYPES = EventTypes(REGISTRY)
NAMES = REGISTRY.type_names
LOCATION = Path("schemas/fuzz.avsc")
# HOURGLASS_FUZZ_EXAMPLES=2000 for a longer hunt.
EXAMPLES = int(os.environ.get("HOURGLASS_FUZZ_EXAMPLES", "80"))
PROPS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ (a) the wire

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _envelope(name: str, data: Any, i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "/fuzz", "type": name, "data": data}


@st.composite
def valid_events(draw: st.DrawFn, i: int = 0) -> dict[str, Any]:
    name = draw(st.sampled_from(NAMES))
    return _envelope(name, draw(valid_data(REGISTRY[name].avro)), i)


# A valid event broken in one way the contract names (expected: rejected).
BREAKS = {
    "no id": lambda e: e.pop("id"),
    "empty id": lambda e: e.__setitem__("id", ""),
    "id not a string": lambda e: e.__setitem__("id", 7),
    "no source": lambda e: e.pop("source"),
    "no specversion": lambda e: e.pop("specversion"),
    "specversion 0.3": lambda e: e.__setitem__("specversion", "0.3"),
    "no type": lambda e: e.pop("type"),
    "type not a string": lambda e: e.__setitem__("type", ["x"]),
    "unknown type": lambda e: e.__setitem__("type", "music.Nope"),
    "no data": lambda e: e.pop("data"),
    "data not an object": lambda e: e.__setitem__("data", [1]),
    "unknown data field": lambda e: e["data"].__setitem__("zz_unknown", 1),
    "time without offset": lambda e: e.__setitem__("time", "2026-01-01T00:00:00"),
    "time not a time": lambda e: e.__setitem__("time", "yesterday"),
    "subject not a string": lambda e: e.__setitem__("subject", 5),
}


@st.composite
def mixed_batches(draw: st.DrawFn) -> tuple[list[Any], set[int]]:
    """A batch of valid, broken and junk events, and the indices that must be rejected."""
    events: list[Any] = []
    bad: set[int] = set()
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["valid", "valid", "broken", "junk"]))
        if kind == "junk":
            value = draw(json_values)
            events.append(value)
            bad.add(i)  # junk JSON is never a valid event (no "data" of a known type)
            continue
        ev = draw(valid_events(i))
        if kind == "broken":
            BREAKS[draw(st.sampled_from(sorted(BREAKS)))](ev)
            bad.add(i)
        events.append(ev)
    return events, bad


def assert_well_formed(checked: Checked) -> None:
    """What any result must satisfy: each rejection named, counts add up."""
    indices = [r.index for r in checked.rejected]
    assert indices == sorted(set(indices))
    assert all(0 <= i < checked.count for i in indices)
    for r in checked.rejected:
        assert isinstance(r.reason, str) and r.reason.strip(), r
        assert r.code, r
    accepted = sum(len(v) for v in checked.by_type.values())
    assert accepted + len(checked.rejected) == checked.count
    assert set(checked.by_type) <= set(NAMES)


def check(validator: Validator, payload: Payload) -> Checked | None:
    """``Validator.check``; None if it refused the body as a whole (as it may)."""
    try:
        checked = validator.check(payload)
    except (Unparseable, BodyTooLarge, EmptyBatch) as exc:
        assert str(exc).strip()
        return None
    assert_well_formed(checked)
    return checked


LIMITS = st.builds(Limits, st.integers(1, 2048), st.integers(1, 12))
BIG = Limits(max_event_bytes=256 * 1024, max_events_per_request=10_000)


@PROPS
@given(body=st.binary(max_size=300), mode=st.sampled_from(Mode), limits=LIMITS)
def test_check_arbitrary_bytes(body: bytes, mode: Mode, limits: Limits) -> None:
    check(Validator(TYPES, limits), Payload(mode, body))


@PROPS
@given(value=json_values, mode=st.sampled_from(Mode), limits=LIMITS)
def test_check_arbitrary_json(value: Any, mode: Mode, limits: Limits) -> None:
    checked = check(Validator(TYPES, limits), Payload(mode, msgspec.json.encode(value)))
    if checked is not None:
        assert checked.by_type == {}  # nothing here is a valid event
        assert len(checked.rejected) == checked.count


@PROPS
@given(batch=mixed_batches())
def test_check_names_exactly_the_bad_events(batch: tuple[list[Any], set[int]]) -> None:
    events, bad = batch
    checked = check(Validator(TYPES, BIG), Payload(Mode.BATCH, msgspec.json.encode(events)))
    assert checked is not None
    assert {r.index for r in checked.rejected} == bad
    for r in checked.rejected:
        ev = events[r.index]
        expected_id = ev.get("id") if isinstance(ev, dict) else None
        assert r.id == (expected_id if isinstance(expected_id, str) else None)
    ids = sorted(e.id for envelopes in checked.by_type.values() for e in envelopes)
    assert ids == sorted(events[i]["id"] for i in range(len(events)) if i not in bad)


@PROPS
@given(event=valid_events())
def test_structured_valid_event_accepted(event: dict[str, Any]) -> None:
    checked = check(Validator(TYPES, BIG), Payload(Mode.SINGLE, msgspec.json.encode(event)))
    assert checked is not None and checked.rejected == [] and checked.count == 1


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


_ZSTD = zstandard.ZstdCompressor()
CODERS = {"gzip": _gzip, "x-gzip": _gzip, "zstd": _ZSTD.compress}


@st.composite
def encoded(draw: st.DrawFn) -> tuple[str | None, bytes]:
    encoding = draw(
        st.sampled_from([None, "", "identity", *CODERS, "br", "GZIP"]) | st.text(max_size=8)
    )
    raw = draw(st.binary(max_size=200))
    shape = draw(st.sampled_from(["raw", "encoded", "members", "truncated", "tail"]))
    coder = CODERS.get(encoding or "")
    if coder is None or shape == "raw":
        return encoding, raw
    body = coder(raw)
    if shape == "members":
        body += coder(draw(st.binary(max_size=50)))
    elif shape == "truncated":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif shape == "tail":
        body += draw(st.binary(min_size=1, max_size=8))
    return encoding, body


@PROPS
@given(sample=encoded(), limit=st.integers(0, 400))
def test_decompress_only_invalid_input(sample: tuple[str | None, bytes], limit: int) -> None:
    encoding, body = sample
    try:
        out = decompress(body, encoding, limit)
    except (Unparseable, BodyTooLarge, UnsupportedMediaType) as exc:
        assert str(exc).strip()
        assert encoding not in (None, "", "identity")
        return
    if encoding in (None, "", "identity"):
        assert out == body
    else:
        assert encoding in CODERS and len(out) <= limit


@PROPS
@given(
    raw=st.binary(max_size=600), encoding=st.sampled_from(sorted(CODERS)), limit=st.integers(0, 800)
)
def test_decompress_round_trip_and_cap(raw: bytes, encoding: str, limit: int) -> None:
    body = CODERS[encoding](raw)
    if len(raw) <= limit:
        assert decompress(body, encoding, limit) == raw
    else:
        with pytest.raises(BodyTooLarge):
            decompress(body, encoding, limit)


header_names = st.sampled_from(
    ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject", "ce-dataschema"]
) | st.text(min_size=1, max_size=10)
content_types = (
    st.none()
    | st.sampled_from(
        [BATCH, STRUCTURED, JSON, f"{JSON}; charset=utf-8", "text/plain", "a/b+json", "", " ;"]
    )
    | st.text(max_size=20)
)


@PROPS
@given(
    body=st.binary(max_size=100) | json_values.map(msgspec.json.encode),
    content_type=content_types,
    headers=st.dictionaries(header_names, st.text(max_size=20), max_size=6),
)
def test_to_payload_then_check(
    body: bytes, content_type: str | None, headers: dict[str, str]
) -> None:
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        payload = to_payload(body, content_type, headers)
    except (UnsupportedMediaType, Unparseable) as exc:
        assert str(exc).strip()
        return
    except InvalidInput as exc:  # pragma: no cover - a new kind would need a status
        pytest.fail(f"unexpected {type(exc).__name__}: {exc}")
    assert isinstance(payload.body, bytes)
    check(Validator(TYPES, BIG), payload)


@PROPS
@given(event=valid_events(), content_type=st.sampled_from([JSON, "a/b+json", None]))
def test_binary_mode_valid_event_accepted(event: dict[str, Any], content_type: str | None) -> None:
    headers = {f"ce-{k}": str(v) for k, v in event.items() if k != "data"}
    payload = to_payload(msgspec.json.encode(event["data"]), content_type, headers)
    checked = check(Validator(TYPES, BIG), payload)
    assert checked is not None and checked.rejected == [], checked


# ------------------------------------------------------- (b) the schema compiler

_PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
_LOGICAL = {
    "timestamp-millis": "long",
    "timestamp-micros": "long",
    "date": "int",
    "uuid": "string",
}
_KEYS = [
    "type",
    "name",
    "namespace",
    "fields",
    "symbols",
    "items",
    "values",
    "size",
    "default",
    "logicalType",
    "aliases",
    "doc",
]
_TYPE_WORDS = [*_PRIMITIVES, "record", "enum", "array", "map", "fixed", "R", "E", "x.R", "Nope"]
_hashable_junk = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6)
_names = st.sampled_from(["R", "E", "F", "a", "b", "class", "x.R", "1x", "", "__a", "ok_1"])


def _avro_like(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One level of an Avro-ish schema: mostly the right keys, with wrong values too.

    Inputs that once crashed the compiler are pinned in ONCE_CRASHED below.
    """
    field = st.fixed_dictionaries(
        {"name": _names},
        optional={"type": inner, "default": json_values, "aliases": json_values},
    )
    dict_schema = st.fixed_dictionaries(
        {"type": st.sampled_from(_TYPE_WORDS) | _hashable_junk},
        optional={
            "name": _names | _hashable_junk,
            "namespace": st.sampled_from(["", "x", "x.y", "1"]) | _hashable_junk,
            "fields": st.lists(field, max_size=4) | _hashable_junk,
            "symbols": st.lists(st.sampled_from(["A", "B", "a b", ""]), max_size=3),
            "items": inner,
            "values": inner,
            "size": st.integers(-2, 2**62),
            "default": json_values,
            "logicalType": st.sampled_from([*_LOGICAL, "decimal", "other"]) | _hashable_junk,
            "aliases": json_values,
        },
    )
    return dict_schema | st.lists(inner, max_size=3)


avro_like = st.recursive(st.sampled_from(_TYPE_WORDS) | _hashable_junk, _avro_like, max_leaves=10)
top_level = st.one_of(
    avro_like,
    st.fixed_dictionaries(
        {"type": st.just("record"), "name": _names, "fields": st.lists(avro_like, max_size=4)},
        optional={"namespace": st.sampled_from(["x", ""])},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("record"),
            "name": st.just("R"),
            "fields": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["a", "b", "c"]), "type": avro_like},
                    optional={"default": json_values},
                ),
                max_size=4,
            ),
        }
    ),
)


@PROPS
@given(avsc=top_level)
def test_compile_arbitrary_or_schema_error(avsc: Any) -> None:
    try:
        compiled = compile_schema(avsc, path=LOCATION)
    except SchemaError as exc:
        assert str(exc).startswith(f"{LOCATION}: "), exc
        return
    assert compiled.type_name
    jsonschema_rs.validator_for(data_schema(compiled))  # the derived schema is valid JSON Schema


class _AvroBuilder:
    """Builds a valid Avro record schema in the order the parser reads it."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.count = itertools.count()
        self.named: dict[str, dict[str, Any]] = {}  # usable as references once defined

    def type(self, depth: int) -> Any:
        draw = self.draw
        choices = ["primitive", "logical", "enum", "fixed"]
        if depth < 3:
            choices += ["array", "map", "nullable", "record"]
        if self.named:
            choices.append("reference")
        kind = draw(st.sampled_from(choices))
        if kind == "primitive":
            return draw(st.sampled_from(_PRIMITIVES[1:]))
        if kind == "logical":
            logical = draw(st.sampled_from(sorted(_LOGICAL)))
            return {"type": _LOGICAL[logical], "logicalType": logical}
        if kind == "reference":
            return draw(st.sampled_from(sorted(self.named)))
        if kind == "enum":
            symbols = draw(st.lists(st.sampled_from("ABCDEFG"), min_size=1, unique=True))
            return self.define({"type": "enum", "name": f"E{next(self.count)}", "symbols": symbols})
        if kind == "fixed":
            size = draw(st.integers(0, 20))
            return self.define({"type": "fixed", "name": f"F{next(self.count)}", "size": size})
        if kind == "array":
            return {"type": "array", "items": self.type(depth + 1)}
        if kind == "map":
            return {"type": "map", "values": self.type(depth + 1)}
        if kind == "nullable":
            inner = self.type(depth + 1)
            if isinstance(inner, list):  # ["null", ["null", T]] is not a valid union
                return inner
            return ["null", inner] if draw(st.booleans()) else [inner, "null"]
        return self.record(depth + 1)

    def define(self, schema: dict[str, Any]) -> dict[str, Any]:
        self.named[schema["name"]] = schema
        return schema

    def record(self, depth: int) -> dict[str, Any]:
        name = f"R{next(self.count)}"
        names = ["a", "b", "c", "class", "type", "data", "id"]
        fields = []
        for field_name in self.draw(st.lists(st.sampled_from(names), unique=True, max_size=5)):
            schema = self.type(depth)
            field: dict[str, Any] = {"name": field_name, "type": schema}
            if self.draw(st.booleans()):
                field["default"] = self.draw(avro_default(schema, self.named))
            fields.append(field)
        return self.define({"type": "record", "name": name, "fields": fields})


@st.composite
def valid_avro(draw: st.DrawFn) -> dict[str, Any]:
    top = _AvroBuilder(draw).record(0)
    top["namespace"] = draw(st.sampled_from(["fuzz", "a.b"]))
    return top


def avro_default(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A default in Avro's JSON encoding that fits ``schema``."""
    if isinstance(schema, str):
        if schema in named:
            return avro_default(named[schema], named)
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(-3.4e38, 3.4e38, allow_nan=False),
            "double": st.floats(allow_nan=False, allow_infinity=False),
            "bytes": st.text(st.characters(max_codepoint=255), max_size=6),
            "string": st.text(max_size=6),
        }[schema]
    if isinstance(schema, list):
        inner = schema[0] if schema[1] == "null" else schema[1]
        return st.none() | avro_default(inner, named)
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "date":
        return st.integers(-700_000, 2_900_000)
    if logical in ("timestamp-millis", "timestamp-micros"):
        return st.integers(-(10**13), 10**13)
    if logical == "uuid":
        return st.uuids().map(str)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        size = schema["size"]
        return st.text(st.characters(max_codepoint=255), min_size=size, max_size=size)
    if kind == "array":
        return st.lists(avro_default(schema["items"], named), max_size=2)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=4), avro_default(schema["values"], named), max_size=2
        )
    if kind == "record":
        return st.fixed_dictionaries(
            {f["name"]: avro_default(f["type"], named) for f in schema["fields"]}
        )
    return avro_default(kind, named)


def _ints_are_ints(value: Any) -> bool:
    if isinstance(value, float):
        return not value.is_integer() or math.isinf(value)
    if isinstance(value, list):
        return all(map(_ints_are_ints, value))
    if isinstance(value, dict):
        return all(map(_ints_are_ints, value.values()))
    return True


@settings(PROPS, max_examples=max(1, EXAMPLES * 3 // 4))
@given(avsc=valid_avro(), data=st.data())
def test_valid_schemas_compile_and_values_round_trip(avsc: dict[str, Any], data: Any) -> None:
    compiled = compile_schema(avsc, path=LOCATION)
    validator = jsonschema_rs.validator_for(data_schema(compiled), validate_formats=True)
    for _ in range(3):
        value = data.draw(valid_data(avsc))
        raw = msgspec.json.encode(value)
        decoded = msgspec.json.decode(raw, type=compiled.data_type)
        again = msgspec.json.decode(msgspec.json.encode(decoded), type=compiled.data_type)
        assert again == decoded
        assert validator.is_valid(value), list(validator.iter_errors(value))[:3]
    # A registry of it is served as an OpenAPI document, and its events validate.
    registry = SchemaRegistry.from_schemas([compiled])
    msgspec.json.encode(openapi_document(registry))
    envelope = _envelope(compiled.type_name, data.draw(valid_data(avsc)), 0)
    assert jsonschema_rs.validator_for(event_schema(compiled)).is_valid(envelope)
    checked = Validator(EventTypes(registry), BIG).check(
        Payload(Mode.BATCH, msgspec.json.encode([envelope]))
    )
    assert checked.rejected == [], checked.rejected


def _mutate(value: Any, data: Any) -> Any:
    """``value`` with one node replaced by an arbitrary JSON value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: _mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(value[i], data), *value[i + 1 :]]
    return data.draw(json_values)


@settings(PROPS, max_examples=max(1, EXAMPLES * 3 // 4))
@given(avsc=valid_avro(), data=st.data())
def test_openapi_schema_agrees_with_compiled(avsc: dict[str, Any], data: Any) -> None:
    """On mutated values, the derived JSON Schema and the compiled Struct agree."""
    compiled = compile_schema(avsc, path=LOCATION)
    validator = jsonschema_rs.validator_for(data_schema(compiled), validate_formats=True)
    for _ in range(4):
        value = _mutate(data.draw(valid_data(avsc)), data)
        assume(_ints_are_ints(value))  # Avro wants 1, not 1.0; JSON Schema cannot say so
        try:
            # What the gateway accepts: the canonical form, else Avro JSON's.
            msgspec.json.decode(msgspec.json.encode(value), type=compiled.avro_json_type)
            accepted = True
        except msgspec.ValidationError:
            accepted = False
        assert validator.is_valid(value) == accepted, (value, _first_error(validator, value))


def _first_error(validator: Any, value: Any) -> str:
    return next((str(e) for e in validator.iter_errors(value)), "valid")


# ------------------------------------- inputs that once crashed the compiler

ONCE_CRASHED = {
    "type is a list inside a schema object": {"type": {"type": ["null", "string"]}},
    "type is a schema object": {"type": {"type": "string"}},
    "logicalType is a list": {"type": "long", "logicalType": ["timestamp-millis"]},
    "fixed size beyond msgspec's lengths": {"type": "fixed", "name": "F", "size": 2**63},
}


@pytest.mark.parametrize("field_type", ONCE_CRASHED.values(), ids=list(ONCE_CRASHED))
def test_inputs_that_once_crashed_compile_or_raise_schema_error(field_type: Any) -> None:
    avsc = {"type": "record", "name": "R", "fields": [{"name": "f", "type": field_type}]}
    try:
        compile_schema(avsc, path=LOCATION)
    except SchemaError:
        pass


def test_registry_of_compiled_is_typed() -> None:
    assert all(isinstance(s, CompiledSchema) for s in REGISTRY)
