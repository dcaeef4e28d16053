"""The schema compiler against a real Avro implementation: fastavro.

Records that fastavro accepts (``fastavro.validation.validate``) and encodes as
Avro JSON (``json_writer``: timestamps as epoch integers in the schema's unit,
dates as day counts) must be accepted by the gateway, in batches (also mixed with
RFC 3339 events of the same type) and one by one; the decoded ``data``, the bus
line and the lake row must all hold the original values. The records come from
the raw ``.avsc`` (``tests/avro_records.py``), not from hourglass's parser, so a
mistake there cannot hide in the expectation. Schemas: every bundled one, and
tricky ones below (logical types in arrays, maps, nullable unions of both branch
orders and nested records, a record type used again by name, keyword field names,
namespaces, defaults of logical types).

Deliberately not accepted, so not tested as accepted:

- Avro JSON's wrapped union form (``{"string": "x"}``): a nullable field takes the
  bare value, as JSON clients send it (``write_union_type=False`` here);
- Avro JSON's ``bytes``/``fixed`` as strings of code points 0-255: the gateway
  takes base64, as JSON and CloudEvents clients send bytes; the tests convert
  fastavro's strings to base64 (``for_gateway``);
- instants or days that Python's ``datetime``/``date`` cannot hold in UTC (before
  0001-01-01, after 9999-12-31): fastavro encodes e.g. ``0001-01-01T00:00+01:00``,
  the gateway rejects it (checked below);
- what fastavro's JSON writer passes without checking: floats beyond float32's
  range, NaN/Infinity (not JSON), ``uuid`` strings that are not UUIDs.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import fastavro
import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hourglass.events import EventTypes
from hourglass.gateway.validate import Checked, Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.lake.arrow import LakeSchema
from hourglass.schemas import DEMO_SCHEMAS_DIR, CompiledSchema, SchemaRegistry, compile_schema
from tests.avro_records import (
    EPOCH,
    EPOCH_DAY,
    UNITS,
    Arr,
    EnumT,
    FixedT,
    MapT,
    Node,
    Opt,
    Prim,
    Rec,
    avro_json,
    expected,
    for_gateway,
    from_bus,
    from_lake,
    omit_defaults,
    records,
    resolve,
    rfc3339,
)

MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
MICROS = {"type": "long", "logicalType": "timestamp-micros"}
DATE = {"type": "int", "logicalType": "date"}

# Logical types everywhere they can nest; keyword names; a record used again by name.
NESTED = {
    "type": "record",
    "name": "Nested",
    "namespace": "tricky",
    "fields": [
        {"name": "class", "type": "string"},
        {"name": "from", "type": MILLIS},
        {"name": "at_ms", "type": MILLIS},
        {"name": "at_us", "type": MICROS},
        {"name": "day", "type": DATE},
        {"name": "when", "type": {"type": "array", "items": MICROS}},
        {"name": "days", "type": {"type": "array", "items": DATE}, "default": []},
        {"name": "maybe_ms", "type": ["null", MILLIS], "default": None},
        {"name": "day_or_null", "type": [DATE, "null"], "default": 0},
        {
            "name": "home",
            "type": {
                "type": "record",
                "name": "Place",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "seen_at", "type": MICROS},
                    {"name": "opened", "type": ["null", DATE], "default": None},
                    {"name": "lambda", "type": "int", "default": 7},
                ],
            },
        },
        {"name": "work", "type": "Place"},
        {"name": "places", "type": {"type": "array", "items": "tricky.Place"}},
        {"name": "maybe_place", "type": ["null", "Place"], "default": None},
        {"name": "place_or_null", "type": ["Place", "null"]},
    ],
}

# Defaults of logical types (Avro writes them as numbers), maps, fixed, bytes.
DEFAULTS = {
    "type": "record",
    "name": "Defaults",
    "namespace": "tricky",
    "fields": [
        {"name": "at_ms", "type": MILLIS, "default": -1},
        {"name": "at_us", "type": MICROS, "default": 1_700_000_000_123_456},
        {"name": "day", "type": DATE, "default": -719162},
        {"name": "stamps", "type": {"type": "array", "items": MILLIS}, "default": [0, -1001]},
        {"name": "by_day", "type": {"type": "map", "values": DATE}, "default": {"k": 19000}},
        {"name": "by_key", "type": {"type": "map", "values": ["null", MICROS]}},
        {
            "name": "span",
            "type": {
                "type": "record",
                "name": "Span",
                "fields": [
                    {"name": "start", "type": MICROS},
                    {"name": "end", "type": ["null", MICROS], "default": None},
                    {"name": "import", "type": "boolean", "default": True},
                ],
            },
            "default": {"start": 5},
        },
        {"name": "token", "type": "bytes", "default": "\u00ff\u0000"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "ratio", "type": "float"},
        {"name": "mean", "type": "double", "default": 0.5},
        {"name": "count", "type": "long", "default": 0},
    ],
}

# Namespaces: a name given in full, one inherited, one set on an inner type, and
# the references to each.
NAMESPACES = {
    "type": "record",
    "name": "deep.Outer",
    "fields": [
        {
            "name": "inner",
            "type": {
                "type": "record",
                "name": "Inner",
                "namespace": "other",
                "fields": [
                    {"name": "at", "type": MILLIS},
                    {
                        "name": "color",
                        "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]},
                    },
                ],
            },
        },
        {"name": "again", "type": "other.Inner"},
        {"name": "color", "type": "other.Color"},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 8}},
        {"name": "hashes", "type": {"type": "map", "values": "Hash"}},
        {
            "name": "grid",
            "type": {"type": "map", "values": {"type": "array", "items": ["null", DATE]}},
        },
        {
            "name": "rows",
            "type": {"type": "array", "items": {"type": "map", "values": "other.Inner"}},
        },
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "flag", "type": "boolean"},
        {"name": "maybe", "type": ["null", "other.Inner"], "default": None},
    ],
}
TRICKY = [NESTED, DEFAULTS, NAMESPACES]


@dataclass(frozen=True)
class Case:
    """One event type: compiled by hourglass, parsed by fastavro, resolved by us."""

    schema: CompiledSchema
    parsed: Any
    node: Rec
    records: st.SearchStrategy[Any]
    lake: LakeSchema


def _case(schema: CompiledSchema) -> Case:
    node = resolve(schema.avro)
    return Case(schema, fastavro.parse_schema(schema.avro), node, records(node), LakeSchema(schema))


REGISTRY = SchemaRegistry.from_schemas(
    [*SchemaRegistry.load(DEMO_SCHEMAS_DIR), *(compile_schema(avsc) for avsc in TRICKY)]
)
CASES = {s.type_name: _case(s) for s in REGISTRY}
VALIDATOR = Validator(
    EventTypes(REGISTRY), Limits(max_event_bytes=256 * 1024, max_events_per_request=10_000)
)
ENCODER = msgspec.json.Encoder()
BUILTINS = (bytes, dt.datetime, dt.date)


def _event(index: int, type_name: str, data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{index}",
        "source": "/avro",
        "type": type_name,
        "data": data,
    }


def _sent(case: Case, record: Any, sent: Any, *, strip: bool, rfc: bool) -> Any:
    """The ``data`` to send: fastavro's Avro JSON (maybe without the fields the record
    left out), or the canonical RFC 3339 form of the same values."""
    if rfc:
        return rfc3339(case.node, expected(case.node, record))
    data = for_gateway(case.node, sent)
    return omit_defaults(case.node, data, record) if strip else data


def _assert_holds(case: Case, checked: Checked, ids: list[str], wants: list[Any]) -> None:
    """The accepted envelopes are ``ids`` in order, and their data, bus lines and lake
    rows all equal ``wants``."""
    assert checked.rejected == []
    envelopes = checked.by_type[case.schema.type_name]
    assert [e.id for e in envelopes] == ids
    for e, want in zip(envelopes, wants, strict=True):
        assert msgspec.to_builtins(e.data, builtin_types=BUILTINS) == want, e.id
    lines = ENCODER.encode_lines(envelopes)
    for line, want in zip(lines.splitlines(), wants, strict=True):
        assert from_bus(case.node, msgspec.json.decode(line)["data"]) == want, line
    rows = case.lake.to_table(lines).to_pylist()
    for row, want in zip(rows, wants, strict=True):
        got = from_lake(case.node, {f.name: row[f.name] for f in case.node.fields})
        assert got == want, row["id"]


@pytest.mark.parametrize("type_name", sorted(CASES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_fastavro_writes_as_avro_json_is_accepted_and_lands_unchanged(
    type_name: str, data: st.DataObject
) -> None:
    """A batch of records as fastavro writes them (fields with defaults sometimes left
    out, some events in RFC 3339 instead), then each event alone."""
    case = CASES[type_name]
    items = data.draw(
        st.lists(st.tuples(case.records, st.booleans(), st.booleans()), min_size=1, max_size=6),
        label="(record, omit defaults, send as RFC 3339)",
    )
    batch = [record for record, _, _ in items]
    for record in batch:
        assume(fastavro.validation.validate(record, case.parsed, raise_errors=False))
    wants = [expected(case.node, record) for record in batch]
    events = [
        _event(i, type_name, _sent(case, record, sent, strip=strip, rfc=rfc))
        for i, ((record, strip, rfc), sent) in enumerate(
            zip(items, avro_json(case.parsed, batch), strict=True)
        )
    ]
    ids = [e["id"] for e in events]
    _assert_holds(
        case, VALIDATOR.check(Payload(Mode.BATCH, json.dumps(events).encode())), ids, wants
    )
    for event, want in zip(events, wants, strict=True):
        single = VALIDATOR.check(Payload(Mode.SINGLE, json.dumps(event).encode()))
        _assert_holds(case, single, [event["id"]], [want])


ANY_ITEM = st.sampled_from(sorted(CASES)).flatmap(
    lambda t: st.tuples(st.just(t), CASES[t].records, st.booleans(), st.booleans())
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANY_ITEM, min_size=2, max_size=10))
def test_a_batch_of_every_type_mixed(items: list[tuple[str, Any, bool, bool]]) -> None:
    """Avro JSON and RFC 3339 events of types with and without logical types, in one
    batch: the lenient decode covers every type at once."""
    events: list[dict[str, Any]] = []
    wants: dict[str, list[tuple[str, Any]]] = {}
    for i, (type_name, record, strip, rfc) in enumerate(items):
        case = CASES[type_name]
        assume(fastavro.validation.validate(record, case.parsed, raise_errors=False))
        [sent] = avro_json(case.parsed, [record])
        events.append(_event(i, type_name, _sent(case, record, sent, strip=strip, rfc=rfc)))
        wants.setdefault(type_name, []).append((f"e{i}", expected(case.node, record)))
    checked = VALIDATOR.check(Payload(Mode.BATCH, json.dumps(events).encode()))
    assert sorted(checked.by_type) == sorted(wants)
    for type_name, pairs in wants.items():
        ids, values = zip(*pairs, strict=True)
        _assert_holds(CASES[type_name], checked, list(ids), list(values))


_SCALAR = {
    "null": None,
    "boolean": True,
    "int": -1,
    "long": -1,
    "float": 0.5,
    "double": 0.5,
    "string": "s",
    "bytes": b"\x00\xff",
}


def _filled(node: Node, instant: dt.datetime, day: dt.date) -> Any:
    """A record of ``node`` with every field set, every instant and day the given one."""
    match node:
        case Prim(logical=logical) if logical in UNITS:
            return instant
        case Prim(logical="date"):
            return day
        case Prim(logical="uuid"):
            return str(uuid.UUID(int=1))
        case Prim(type=kind):
            return _SCALAR[kind]
        case EnumT(symbols=symbols):
            return symbols[-1]
        case FixedT(size=size):
            return bytes(range(size))
        case Arr(items=items):
            return [_filled(items, instant, day)] * 2
        case MapT(values=values):
            return {"k": _filled(values, instant, day), "k2": _filled(values, instant, day)}
        case Opt(inner=inner):
            return _filled(inner, instant, day)
        case Rec(fields=fields):
            return {f.name: _filled(f.type, instant, day) for f in fields}
    raise AssertionError(node)


MICROSECOND = dt.timedelta(microseconds=1)
RANGE_ENDS = {
    "first": (dt.datetime.min.replace(tzinfo=dt.UTC), dt.date.min),
    "last": (dt.datetime.max.replace(tzinfo=dt.UTC), dt.date.max),
    "before-epoch": (EPOCH - MICROSECOND, EPOCH_DAY - dt.timedelta(days=1)),
}


@pytest.mark.parametrize("end", sorted(RANGE_ENDS))
@pytest.mark.parametrize("type_name", sorted(CASES))
def test_the_ends_of_the_range_land_unchanged(type_name: str, end: str) -> None:
    """Years 1 and 9999 and the microsecond before 1970, as Avro JSON and RFC 3339,
    through both ways the lake reads a batch (Arrow's JSON reader, or msgspec)."""
    case = CASES[type_name]
    record = _filled(case.node, *RANGE_ENDS[end])
    avro = for_gateway(case.node, avro_json(case.parsed, [record])[0])
    want = expected(case.node, record)
    events = [_event(0, type_name, avro), _event(1, type_name, rfc3339(case.node, want))]
    _assert_holds(
        case,
        VALIDATOR.check(Payload(Mode.BATCH, json.dumps(events).encode())),
        ["e0", "e1"],
        [want, want],
    )
    for event in events:
        single = VALIDATOR.check(Payload(Mode.SINGLE, json.dumps(event).encode()))
        _assert_holds(case, single, [event["id"]], [want])


@pytest.mark.parametrize("type_name", ["tricky.Nested", "tricky.Defaults"])
def test_sub_millisecond_rfc3339_instants_land_floored_as_avro_encodes_them(
    type_name: str,
) -> None:
    """A ``timestamp-millis`` holds whole milliseconds; Avro floors a finer instant
    (fastavro, and Java's ``Instant.toEpochMilli``), so 1969-12-31T23:59:59.999999Z is
    ...59.999 whether it is sent as fastavro's Avro JSON or as RFC 3339, and whichever
    way the lake reads the schema (Nested: Arrow's JSON reader; Defaults: msgspec)."""
    case = CASES[type_name]
    assert case.lake.columnar is (type_name == "tricky.Nested")
    record = _filled(case.node, EPOCH - MICROSECOND, EPOCH_DAY)
    want = expected(case.node, record)
    assert want["at_ms"] == EPOCH - dt.timedelta(milliseconds=1)
    avro = for_gateway(case.node, avro_json(case.parsed, [record])[0])
    events = [_event(0, type_name, avro), _event(1, type_name, rfc3339(case.node, record))]
    checked = VALIDATOR.check(Payload(Mode.BATCH, json.dumps(events).encode()))
    lines = ENCODER.encode_lines(checked.by_type[type_name])
    rows = case.lake.to_table(lines).to_pylist()
    for row in rows:
        got = from_lake(case.node, {f.name: row[f.name] for f in case.node.fields})
        assert got["at_ms"] == want["at_ms"], (row["id"], got["at_ms"])
        assert got == want, row["id"]


def test_avro_json_really_is_integers() -> None:
    """The tests above test what they say: fastavro writes logical types as numbers."""
    case = CASES["tricky.Nested"]
    record = _filled(case.node, EPOCH - MICROSECOND, EPOCH_DAY - dt.timedelta(days=1))
    [sent] = avro_json(case.parsed, [record])
    assert (sent["from"], sent["at_ms"], sent["at_us"], sent["day"]) == (-1, -1, -1, -1)
    assert sent["when"] == [-1, -1]
    assert sent["home"]["seen_at"] == sent["places"][1]["seen_at"] == -1


# ------------------------------------------------------------------- rejected

STARTED = "music.PlaybackStarted"
AD = "music.AdImpression"
NOW = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
# Valid for Python and fastavro, but before 0001-01-01T00:00Z, which Python's
# datetime cannot hold in UTC: beyond the gateway's bound, on purpose.
BEFORE_YEAR_1_UTC = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def _valid(type_name: str, instant: dt.datetime = NOW) -> Any:
    """Valid ``data`` of the type as fastavro writes it (bytes as base64)."""
    case = CASES[type_name]
    record = _filled(case.node, instant, instant.date())
    return for_gateway(case.node, avro_json(case.parsed, [record])[0])


BAD = "@@bad@@"
_MAX_US = 253402300799999999  # 9999-12-31T23:59:59.999999Z
_MIN_US = -62135596800000000  # 0001-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("type_name", "path", "token"),
    [
        (STARTED, ("started_at",), str(2**62)),  # far beyond year 9999 in ms
        (STARTED, ("started_at",), str(_MAX_US // 1000 + 1)),
        (STARTED, ("started_at",), str(_MIN_US // 1000 - 1)),
        (STARTED, ("started_at",), "1.5"),
        (STARTED, ("started_at",), "1e3"),
        (STARTED, ("started_at",), "1000.0"),
        (STARTED, ("started_at",), "true"),
        (STARTED, ("started_at",), '"1700000000000"'),  # a number in a string
        (AD, ("shown_at",), str(_MIN_US - 1)),
        (AD, ("shown_at",), str(_valid(AD, BEFORE_YEAR_1_UTC)["shown_at"])),
        (AD, ("shown_at",), "-1.0"),
        (AD, ("shown_at",), "false"),
        (AD, ("campaign_day",), str((dt.date.max - EPOCH_DAY).days + 1)),
        (AD, ("campaign_day",), str((dt.date.min - EPOCH_DAY).days - 1)),
        (AD, ("campaign_day",), str(2**31 - 1)),
        (AD, ("campaign_day",), "1.5"),
        (AD, ("campaign_day",), "true"),
        ("tricky.Nested", ("when", 1), str(2**62)),
        ("tricky.Nested", ("home", "seen_at"), "2.5"),
    ],
    ids=lambda v: "/".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_numbers_that_are_no_instant_or_day_are_rejected_per_event(
    type_name: str, path: tuple[str | int, ...], token: str
) -> None:
    """Out of Python's datetime/date range, a float, a bool, a string of digits: the
    event is rejected with the field named; its valid Avro JSON neighbour goes through."""
    good = _event(0, type_name, _valid(type_name))
    bad = _event(1, type_name, _valid(type_name))
    target = bad["data"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = BAD
    where = "data" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)

    def body(events: Any) -> bytes:
        return json.dumps(events).replace(json.dumps(BAD), token).encode()

    checked = VALIDATOR.check(Payload(Mode.BATCH, body([good, bad])))
    [rejection] = checked.rejected
    assert (rejection.index, rejection.id) == (1, "e1")
    assert where in rejection.reason, rejection.reason
    assert [e.id for e in checked.by_type[type_name]] == ["e0"]
    [single] = VALIDATOR.check(Payload(Mode.SINGLE, body(bad))).rejected
    assert single.reason == rejection.reason
