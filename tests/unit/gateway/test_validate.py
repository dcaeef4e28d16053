"""Whole-envelope validation: valid events pass in one call, each bad one is named."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.events import EventTypes
from hourglass.exceptions import BodyTooLarge
from hourglass.gateway.validate import EmptyBatch, Limits, Validator
from hourglass.gateway.wire import Mode, Payload, Unparseable, decompress, to_payload
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry
from tests.strategies import valid_data

REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
TYPES = EventTypes(REGISTRY)
VALIDATOR = Validator(TYPES, Limits(max_event_bytes=256 * 1024, max_events_per_request=10_000))


def _events(schema_data: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {"specversion": "1.0", "id": f"e{i}", "source": "/t", "type": t, "data": d}
        for i, (t, d) in enumerate(schema_data)
    ]


any_event_data = st.one_of(
    *(valid_data(s.avro).map(lambda d, t=s.type_name: (t, d)) for s in REGISTRY)
)

BREAKS = {
    "no id": lambda e: e.pop("id"),
    "no source": lambda e: e.pop("source"),
    "no specversion": lambda e: e.pop("specversion"),
    "old specversion": lambda e: e.__setitem__("specversion", "0.3"),
    "unknown type": lambda e: e.__setitem__("type", "music.Nope"),
    "no data": lambda e: e.pop("data"),
    "data not object": lambda e: e.__setitem__("data", [1]),
    "bad time": lambda e: e.__setitem__("time", "yesterday"),
    "hgacked negative": lambda e: e.update(hgproducer="p", hgseq=5, hgacked=-1),
    "hgseq zero": lambda e: e.update(hgproducer="p", hgseq=0, hgacked=0),
    "hgproducer empty": lambda e: e.update(hgproducer="", hgseq=2, hgacked=1),
}


@settings(max_examples=40, deadline=None)
@given(st.lists(any_event_data, min_size=1, max_size=20))
def test_valid_batches_pass_whole(items: list[tuple[str, dict[str, Any]]]) -> None:
    events = _events(items)
    checked = VALIDATOR.check(Payload(Mode.BATCH, msgspec.json.encode(events)))
    assert checked.rejected == []
    assert sum(len(v) for v in checked.by_type.values()) == len(events)
    for type_name, envelopes in checked.by_type.items():
        assert all(e.received_at is not None for e in envelopes)
        stored = msgspec.json.decode(TYPES_ENCODER.encode_lines(envelopes).splitlines()[0])
        assert stored["type"] == type_name


TYPES_ENCODER = msgspec.json.Encoder()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(any_event_data, min_size=2, max_size=20),
    st.data(),
)
def test_each_bad_event_is_named_and_neighbours_pass(
    items: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    events = _events(items)
    bad = data.draw(st.sets(st.integers(0, len(events) - 1), min_size=1, max_size=len(events) - 1))
    for index in bad:
        BREAKS[data.draw(st.sampled_from(sorted(BREAKS)))](events[index])
    checked = VALIDATOR.check(Payload(Mode.BATCH, msgspec.json.encode(events)))
    assert sorted(r.index for r in checked.rejected) == sorted(bad)
    assert all(r.reason for r in checked.rejected)
    accepted = {e.id for envs in checked.by_type.values() for e in envs}
    assert accepted == {f"e{i}" for i in range(len(events)) if i not in bad}


def test_sequence_attributes_reach_the_bus_and_a_partial_set_is_not_refused() -> None:
    """The loader uses them only when whole and consistent (loader/copies.py)."""
    good, alone = _skipped(0), _skipped(1)
    good |= {"hgproducer": "s-1", "hgseq": 7, "hgacked": 6}
    alone["hgacked"] = 3
    checked = VALIDATOR.check(Payload(Mode.BATCH, msgspec.json.encode([good, alone])))
    assert checked.rejected == []
    first, second = (
        msgspec.json.decode(msgspec.json.encode(e)) for e in checked.by_type["music.SongSkipped"]
    )
    assert (first["hgproducer"], first["hgseq"], first["hgacked"]) == ("s-1", 7, 6)
    assert second["hgacked"] == 3 and "hgseq" not in second


def test_event_size_limit_names_index_and_limit() -> None:
    small = Validator(TYPES, Limits(max_event_bytes=300, max_events_per_request=10))
    body = msgspec.json.encode([{"id": "1"}, {"id": "x" * 400}])
    with pytest.raises(BodyTooLarge, match=r"index 1 .*max_event_bytes \(300\)"):
        small.check(Payload(Mode.BATCH, body))


def test_count_limit() -> None:
    small = Validator(TYPES, Limits(max_event_bytes=300, max_events_per_request=3))
    with pytest.raises(BodyTooLarge, match="max_events_per_request"):
        small.check(Payload(Mode.BATCH, b"[{},{},{},{}]"))


def _skipped(index: int, track_id: str = "t-1") -> dict[str, Any]:
    data = {
        "user_id": "0e0f5ba1-7d52-4a8c-9d2e-0d4a3f1b6c11",
        "track_id": track_id,
        "skipped_at": "2026-11-26T12:00:00Z",
        "position_ms": 1,
    }
    return _events([("music.SongSkipped", data)])[0] | {"id": f"e{index}"}


def test_limits_hold_for_valid_events_too() -> None:
    """Valid events are decoded before the limits are checked: same answers."""
    small = Validator(TYPES, Limits(max_event_bytes=300, max_events_per_request=3))
    four = msgspec.json.encode([_skipped(i) for i in range(4)])
    with pytest.raises(BodyTooLarge, match=r"^4 events in one request, .*\(3\)$"):
        small.check(Payload(Mode.BATCH, four))
    big = msgspec.json.encode([_skipped(0), _skipped(1, "t" * 400)])
    with pytest.raises(BodyTooLarge, match=r"^event at index 1 is \d+ bytes, .*\(300\)$"):
        small.check(Payload(Mode.BATCH, big))
    one = msgspec.json.encode(_skipped(0, "t" * 400))
    with pytest.raises(BodyTooLarge, match=r"^event at index 0 is \d+ bytes"):
        small.check(Payload(Mode.SINGLE, one))
    with pytest.raises(EmptyBatch, match="empty batch"):
        small.check(Payload(Mode.BATCH, b"[]"))


def test_a_body_no_larger_than_one_event_is_not_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """No event can exceed the limit then: one parse of the body is enough."""
    validator = Validator(TYPES, Limits(max_event_bytes=4096, max_events_per_request=10))
    body = msgspec.json.encode([_skipped(i) for i in range(3)])

    def split(payload: Payload) -> None:
        raise AssertionError("split")

    monkeypatch.setattr(validator, "_split", split)
    assert validator.check(Payload(Mode.BATCH, body)).count == 3


def test_invalid_utf8_comes_after_the_limits_and_the_shape() -> None:
    """The order of errors of a parse that splits first, whichever parse runs first."""
    small = Validator(TYPES, Limits(max_event_bytes=300, max_events_per_request=10))
    big = msgspec.json.encode([_skipped(0, "t\u00e9" + "t" * 400)]).replace(b"\xc3\xa9", b"\xff")
    with pytest.raises(BodyTooLarge, match="index 0"):
        small.check(Payload(Mode.BATCH, big))
    broken = msgspec.json.encode([_skipped(0, "t\u00e9")]).replace(b"\xc3\xa9", b"\xff")
    with pytest.raises(Unparseable, match="malformed"):
        small.check(Payload(Mode.BATCH, broken[:-1] + b"}"))
    checked = small.check(Payload(Mode.BATCH, broken))
    assert [r.code for r in checked.rejected] == ["invalid_utf8"]


def _with_bad_byte(event: dict[str, Any], value: str) -> bytes:
    """``event`` as JSON with the one occurrence of the string ``value`` broken by 0xff."""
    body = msgspec.json.encode(event)
    quoted = msgspec.json.encode(value)
    assert body.count(quoted) == 1
    return body.replace(quoted, quoted[:2] + b"\xff" + quoted[2:])


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ("id", "attribute 'id'"),
        ("source", "attribute 'source'"),
        ("type", "attribute 'type'"),
        ("track", "data.track_id"),
        ("subject", "attribute 'subject'"),
        ("key", "a field name in data"),
    ],
)
@pytest.mark.parametrize("mode", [Mode.BATCH, Mode.SINGLE])
def test_invalid_utf8_rejects_only_its_event(field: str, where: str, mode: Mode) -> None:
    """The reason names invalid UTF-8 and where it is; a valid neighbour still passes;
    the attributes that are valid are reported."""
    event = _skipped(1, track_id="track-one") | {"id": "the-id", "subject": "the-subject"}
    value = {
        "id": "the-id",
        "source": "/t",
        "type": "music.SongSkipped",
        "track": "track-one",
        "subject": "the-subject",
        "key": "track_id",
    }[field]
    bad = _with_bad_byte(event, value)
    body = (
        bad if mode is Mode.SINGLE else b"[" + msgspec.json.encode(_skipped(0)) + b"," + bad + b"]"
    )
    checked = VALIDATOR.check(Payload(mode, body))
    index = 0 if mode is Mode.SINGLE else 1
    assert [len(v) for v in checked.by_type.values()] == ([] if mode is Mode.SINGLE else [1])
    [rejection] = checked.rejected
    assert rejection.index == index
    assert rejection.code == "invalid_utf8" and not rejection.text
    assert "invalid UTF-8" in rejection.reason and where in rejection.reason, rejection.reason
    offset = bad.index(b"\xff")
    assert f"byte {offset} of the event" in rejection.reason
    assert bytes(rejection.raw) == bad
    assert rejection.id == (None if field == "id" else "the-id")
    assert rejection.source == (None if field == "source" else "/t")
    assert rejection.type == (None if field == "type" else "music.SongSkipped")


@pytest.mark.parametrize("depth", [1, 500, 850])
def test_invalid_utf8_deep_inside_data_gets_a_short_reason(depth: int) -> None:
    """As deep as the split allows: no RecursionError, and the path is cut short."""
    data = b"[" * depth + b'"\xff"' + b"]" * depth
    event = msgspec.json.encode(_skipped(0)).replace(b'"data":{', b'"data":{"deep":' + data + b",")
    checked = VALIDATOR.check(Payload(Mode.BATCH, b"[" + event + b"]"))
    [rejection] = checked.rejected
    assert rejection.code == "invalid_utf8" and "in data.deep" in rejection.reason
    assert len(rejection.reason) < 250, rejection.reason


def test_invalid_utf8_wins_over_other_reasons() -> None:
    """An event that is not UTF-8 cannot be stored as JSON text, so that is its reason,
    even with an unknown type (whose reason would otherwise keep it as JSON)."""
    event = _skipped(0, track_id="track-one") | {"type": "music.Nope"}
    checked = VALIDATOR.check(Payload(Mode.BATCH, b"[" + _with_bad_byte(event, "track-one") + b"]"))
    assert [r.code for r in checked.rejected] == ["invalid_utf8"]
    assert checked.rejected[0].type == "music.Nope"


@pytest.mark.parametrize("body", [b"{", b"[1,", b"\xff\xfe", b'"text"', b"[" * 50_000])
def test_unparseable_bodies(body: bytes) -> None:
    with pytest.raises(Unparseable):
        VALIDATOR.check(Payload(Mode.BATCH, body))


def test_media_types() -> None:
    assert to_payload(b"[]", "application/cloudevents-batch+json", {}).mode is Mode.BATCH
    assert to_payload(b"{}", "application/cloudevents+json; charset=utf-8", {}).mode is Mode.SINGLE
    assert to_payload(b" [", "application/json", {}).mode is Mode.BATCH
    binary = to_payload(b'{"a":1}', "application/json", {"ce-specversion": "1.0", "ce-id": "a%20b"})
    assert msgspec.json.decode(binary.body) == {
        "specversion": "1.0",
        "id": "a b",
        "datacontenttype": "application/json",
        "data": {"a": 1},
    }


def test_gzip_bomb_is_capped() -> None:
    import gzip

    bomb = gzip.compress(b"0" * 50_000_000)
    with pytest.raises(BodyTooLarge, match="max_body_bytes"):
        decompress(bomb, "gzip", 1_000_000)
    assert decompress(gzip.compress(b"[1]"), "gzip", 10) == b"[1]"
    with pytest.raises(Unparseable):
        decompress(gzip.compress(b"[1]")[:-4], "gzip", 10)
