"""Whole-envelope validation: valid events pass in one call, each bad one is named."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.events import EventTypes
from hourglass.exceptions import BodyTooLarge
from hourglass.gateway.validate import Limits, Validator
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


def test_event_size_limit_names_index_and_limit() -> None:
    small = Validator(TYPES, Limits(max_event_bytes=300, max_events_per_request=10))
    body = msgspec.json.encode([{"id": "1"}, {"id": "x" * 400}])
    with pytest.raises(BodyTooLarge, match=r"index 1 .*max_event_bytes \(300\)"):
        small.check(Payload(Mode.BATCH, body))


def test_count_limit() -> None:
    small = Validator(TYPES, Limits(max_event_bytes=300, max_events_per_request=3))
    with pytest.raises(BodyTooLarge, match="max_events_per_request"):
        small.check(Payload(Mode.BATCH, b"[{},{},{},{}]"))


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
