"""Segment calls to CloudEvents (gateway/segment.py) and through the validator.

Pure logic: the HTTP answers, the failed stream and the SDKs themselves are
tested against a real gateway in tests/integration/test_analytics_*.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.exceptions import BodyTooLarge, ConfigError, Unparseable
from hourglass.gateway.adapt import merge
from hourglass.gateway.segment import SegmentApi
from hourglass.gateway.validate import Checked, Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.schemas import SchemaRegistry, load_registry

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
SETTINGS = Settings(segment=True)


def _api(schemas: str | None = None) -> tuple[SegmentApi, Validator]:
    settings = msgspec.structs.replace(SETTINGS, schemas=schemas)
    types = EventTypes(load_registry(settings))
    return SegmentApi(types, settings), Validator(types, Limits(256 * 1024, 10_000))


API, VALIDATOR = _api()


def _run(api: SegmentApi, validator: Validator, body: Any, call: str | None = None) -> Checked:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    converted = api.convert(api.parse(raw, call), "website", NOW)
    checked = (
        validator.check(Payload(Mode.BATCH, converted.events), NOW) if converted.events else None
    )
    return merge(converted, checked, "properties")


def _track(**over: Any) -> dict[str, Any]:
    call = {
        "type": "track",
        "messageId": "m-1",
        "userId": "u-1",
        "event": "Clicked",
        "properties": {"n": 1, "q": 'a "quoted" text'},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "timestamp": "2026-12-03T11:59:58.123+00:00",
    }
    call.update(over)
    return call


def test_every_kind_lands_in_its_table_with_the_spec_fields() -> None:
    calls = [
        _track(),
        {"type": "identify", "messageId": "m-2", "userId": "u-1", "traits": {"plan": "pro"}},
        {"type": "page", "messageId": "m-3", "anonymousId": "a-1", "name": "Home"},
        {"type": "screen", "messageId": "m-4", "userId": 42, "name": "Settings"},
        {"type": "group", "messageId": "m-5", "userId": "u-1", "groupId": 7, "traits": None},
        {"type": "alias", "messageId": "m-6", "userId": "u-2", "previousId": "u-1"},
    ]
    checked = _run(API, VALIDATOR, {"batch": calls, "sentAt": "2026-12-03T11:59:59Z"})
    assert checked.rejected == []
    assert sorted(checked.by_type) == [
        "segment.aliases",
        "segment.groups",
        "segment.identifies",
        "segment.pages",
        "segment.screens",
        "segment.tracks",
    ]
    track = checked.by_type["segment.tracks"][0]
    assert (track.id, track.source, track.received_at) == ("m-1", "website", NOW)
    assert track.time == dt.datetime(2026, 12, 3, 11, 59, 58, 123000, tzinfo=dt.UTC)
    data = track.data
    assert (data.messageId, data.userId, data.anonymousId, data.event) == (
        "m-1",
        "u-1",
        None,
        "Clicked",
    )
    assert json.loads(data.properties) == {"n": 1, "q": 'a "quoted" text'}
    assert json.loads(data.context)["library"]["name"] == "analytics-python"
    assert data.integrations is None
    assert data.sentAt == dt.datetime(2026, 12, 3, 11, 59, 59, tzinfo=dt.UTC)  # the batch's
    assert data.receivedAt == NOW
    # numbers where Segment has ids become their text; a null object is no text
    assert checked.by_type["segment.screens"][0].data.userId == "42"
    group = checked.by_type["segment.groups"][0].data
    assert (group.groupId, group.traits) == ("7", None)
    assert checked.by_type["segment.aliases"][0].data.previousId == "u-1"


def test_a_timestamp_without_a_zone_is_utc() -> None:
    checked = _run(API, VALIDATOR, {"batch": [_track(timestamp="2026-12-03T10:00:00")]})
    assert checked.by_type["segment.tracks"][0].data.timestamp == dt.datetime(
        2026, 12, 3, 10, tzinfo=dt.UTC
    )


def test_a_single_call_takes_its_kind_from_the_path() -> None:
    body = {"messageId": "m-9", "userId": "u", "traits": {"a": 1}, "writeKey": "wk"}
    parsed = API.parse(json.dumps(body).encode(), "identify")
    assert parsed.write_key == "wk"
    checked = _run(API, VALIDATOR, body, "identify")
    assert list(checked.by_type) == ["segment.identifies"]


BAD = {
    "no messageId": (_track(messageId=None), "missing 'messageId'"),
    "no user": (_track(userId=None), "needs 'userId' or 'anonymousId'"),
    "no type": ({"messageId": "x", "userId": "u"}, "missing 'type'"),
    "unknown type": (_track(type="purchase"), "unknown call type 'purchase'"),
    "track without event": (_track(event=None), "a track needs 'event'"),
    "group without groupId": (
        {"type": "group", "messageId": "g", "userId": "u"},
        "needs 'groupId'",
    ),
    "alias without previousId": (
        {"type": "alias", "messageId": "a", "userId": "u"},
        "needs 'previousId'",
    ),
    "not an object": (5, "a call must be a JSON object"),
    "bad timestamp": (_track(timestamp="yesterday"), "datetime"),
    "userId a list": (_track(userId=["u"]), "userId"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_call_is_rejected_alone_with_its_index_and_text(case: str) -> None:
    bad, reason = BAD[case]
    calls = [_track(messageId="good-0"), bad, _track(messageId="good-2")]
    checked = _run(API, VALIDATOR, {"batch": calls})
    assert [e.id for e in checked.by_type["segment.tracks"]] == ["good-0", "good-2"]
    assert [r.index for r in checked.rejected] == [1]
    assert reason in checked.rejected[0].reason
    assert msgspec.json.decode(bytes(checked.rejected[0].raw)) == bad  # kept as sent
    assert checked.count - len(checked.rejected) == 2


def test_a_call_over_the_size_limit_is_rejected_alone() -> None:
    big = _track(messageId="big", properties={"pad": "x" * 40_000})
    checked = _run(API, VALIDATOR, {"batch": [_track(), big]})
    assert [e.id for e in checked.by_type["segment.tracks"]] == ["m-1"]
    assert [(r.index, r.id) for r in checked.rejected] == [(1, "big")]
    assert "over segment_max_message_bytes (32768)" in checked.rejected[0].reason


@pytest.mark.parametrize(
    ("body", "error", "text"),
    [
        (b"{nope", Unparseable, "not valid JSON"),
        (b"[1, 2]", Unparseable, '"batch"'),
        (b'{"batch": 3}', Unparseable, '"batch"'),
        (
            json.dumps({"batch": [_track(messageId=str(i)) for i in range(3000)]}).encode(),
            BodyTooLarge,
            "segment_max_batch_bytes",
        ),
    ],
    ids=["malformed", "array", "batch not a list", "over 500 KiB"],
)
def test_an_unusable_batch_is_refused_whole(body: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        API.parse(body, None)


def _mapped_schemas(tmp_path: Path) -> str:
    avsc = {
        "type": "record",
        "name": "SongSkipped",
        "namespace": "web",
        "hourglass.segment_event": "Song Skipped",
        "fields": [
            {"name": "track_id", "type": "string"},
            {"name": "position_ms", "type": "int"},
        ],
    }
    (tmp_path / "SongSkipped.avsc").write_text(json.dumps(avsc))
    return str(tmp_path)


def test_a_claimed_track_lands_in_its_typed_table_too(tmp_path: Path) -> None:
    api, validator = _api(_mapped_schemas(tmp_path))
    assert api.mapped == {"Song Skipped": "web.SongSkipped"}
    calls = [
        _track(
            messageId="s-1", event="Song Skipped", properties={"track_id": "t", "position_ms": 5}
        ),
        _track(messageId="s-2", event="Song Skipped", properties={"track_id": "t"}),
        _track(messageId="c-3"),
    ]
    checked = _run(api, validator, {"batch": calls})
    assert [e.id for e in checked.by_type["segment.tracks"]] == ["s-1", "s-2", "c-3"]
    typed = checked.by_type["web.SongSkipped"]
    assert [(e.id, e.source) for e in typed] == [("s-1", "website")]
    assert (typed[0].data.track_id, typed[0].data.position_ms) == ("t", 5)
    # the typed copy of s-2 fails its schema: only it is rejected, named in Segment's terms
    assert [(r.index, r.id, r.type) for r in checked.rejected] == [(1, "s-2", "web.SongSkipped")]
    assert "'position_ms' in properties" in checked.rejected[0].reason
    assert msgspec.json.decode(bytes(checked.rejected[0].raw))["messageId"] == "s-2"


def test_the_segment_types_exist_only_when_on() -> None:
    assert "segment.tracks" not in load_registry(Settings()).type_names
    registry: SchemaRegistry = load_registry(SETTINGS)
    assert {t for t in registry.type_names if t.startswith("segment.")} == {
        "segment.tracks",
        "segment.identifies",
        "segment.pages",
        "segment.screens",
        "segment.groups",
        "segment.aliases",
    }


def test_a_typed_copy_the_key_may_not_send_is_rejected_alone(tmp_path: Path) -> None:
    api, validator = _api(_mapped_schemas(tmp_path))
    call = _track(
        messageId="s-1", event="Song Skipped", properties={"track_id": "t", "position_ms": 5}
    )
    raw = json.dumps({"batch": [call, _track(messageId="c-2")]}).encode()
    converted = api.convert(
        api.parse(raw, None), "website", NOW, lambda t: t.startswith("segment.")
    )
    checked = merge(converted, validator.check(Payload(Mode.BATCH, converted.events), NOW))
    assert [e.id for e in checked.by_type["segment.tracks"]] == ["s-1", "c-2"]
    assert "web.SongSkipped" not in checked.by_type
    assert [(r.index, r.type, r.code) for r in checked.rejected] == [
        (0, "web.SongSkipped", "forbidden_type")
    ]
    assert "may not send type web.SongSkipped" in checked.rejected[0].reason


def test_only_a_track_is_copied_to_a_typed_table(tmp_path: Path) -> None:
    api, validator = _api(_mapped_schemas(tmp_path))
    page = {"type": "page", "messageId": "p-1", "userId": "u", "event": "Song Skipped"}
    checked = _run(api, validator, {"batch": [page]})
    assert list(checked.by_type) == ["segment.pages"]


def test_two_types_may_not_claim_one_event_name(tmp_path: Path) -> None:
    folder = _mapped_schemas(tmp_path)
    other = json.loads((tmp_path / "SongSkipped.avsc").read_text())
    other["name"] = "SongSkippedToo"
    (tmp_path / "SongSkippedToo.avsc").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="both claim the Segment event 'Song Skipped'"):
        _api(folder)
