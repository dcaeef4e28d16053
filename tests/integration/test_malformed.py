"""A battery of malformed requests against one real gateway: none may cause a 5xx.

Per-event problems answer 200 and name the bad event (index, id, reason) while its
valid neighbour in the same batch is accepted and on the bus, and the bad event is
in the failed-events stream with the same reason.  Whole-body problems answer
400 (unparseable: the raw body is kept in the failed-events stream), 413 (a limit,
named) or 415 (content type or encoding).  The gateway must survive all of it.

One nats-server and one gateway serve the whole module; cases run one after the
other, so "what a case added to a stream" is the stream's tail past its length
before the request.
"""

from __future__ import annotations

import base64
import gzip
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import zstandard

from hourglass.config import Settings
from tests.groups import module
from tests.integration.conftest import base_settings
from tests.integration.support import (
    BATCH,
    GatewayProcess,
    NatsServer,
    event,
    events_of,
    failed,
    post,
    skipped,
)

pytestmark = [pytest.mark.integration, module("malformed")]

SKIPPED = "music.SongSkipped"
DEMO_TYPES = {
    "music.AdImpression",
    "music.PlaybackStarted",
    "music.PlaybackStopped",
    "music.SearchPerformed",
    SKIPPED,
}
STRUCTURED = {"content-type": "application/cloudevents+json"}
DEEP = 100_000  # nesting levels for the "deeply nested" cases


# --------------------------------------------------------------------------- bed


@dataclass
class Bed:
    gw: GatewayProcess
    bus: NatsServer

    @property
    def base(self) -> str:
        return self.gw.base

    @property
    def url(self) -> str:
        return self.bus.url

    @property
    def settings(self) -> Settings:
        return self.gw.settings


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root: Path = tmp_path_factory.mktemp("malformed")
    server = NatsServer(root / "bus")
    server.start()
    try:
        settings = base_settings(server, root)
        gw = GatewayProcess(settings, log_path=root / "gateway.log")
        try:
            gw.start()
            yield Bed(gw, server)
        finally:
            gw.stop()
    finally:
        server.stop()


# ----------------------------------------------------------------------- helpers


def enc(value: Any) -> bytes:
    return msgspec.json.encode(value)


def ids_on_bus(bed: Bed, type_name: str) -> list[str]:
    return [e["id"] for e in events_of(bed.url, type_name)]


def no_5xx(bed: Bed, response: httpx.Response) -> None:
    assert response.status_code < 500, (
        f"{response.status_code} {response.text}\n--- gateway log ---\n{bed.gw.log_tail()}"
    )
    assert bed.gw.alive(), bed.gw.log_tail()


def assert_reason(reason: Any, mentions: tuple[str, ...]) -> None:
    """A non-empty, human reason that names the relevant thing(s)."""
    assert isinstance(reason, str) and reason.strip(), reason
    assert "Traceback" not in reason and "internal error" not in reason, reason
    for pattern in mentions:
        assert re.search(pattern, reason, re.IGNORECASE), f"{pattern!r} not in reason {reason!r}"


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str)
    return message


# ------------------------------------------------------------- valid event bases

USER = "6f1c0c7e-8d43-4b8a-9b0e-3f1d2a1b0c9d"


def stopped(**data: Any) -> dict[str, Any]:
    base = {
        "user_id": USER,
        "track_id": "t-2",
        "stopped_at": "2026-11-26T12:00:00.000001Z",
        "played_ms": 1000,
        "reason": "USER_PAUSED",
        "volume": 0.5,
    }
    return event("music.PlaybackStopped", {**base, **data})


def started(**device: Any) -> dict[str, Any]:
    data = {
        "user_id": USER,
        "track_id": "t-3",
        "started_at": "2026-11-26T12:00:00Z",
        "device": {"platform": "IOS", "app_version": "1.2.3", **device},
    }
    return event("music.PlaybackStarted", data)


def ad(**data: Any) -> dict[str, Any]:
    base = {
        "user_id": USER,
        "ad_id": "ad-1",
        "shown_at": "2026-11-26T12:00:00Z",
        "campaign_day": "2026-11-26",
        "duration_ms": 15000,
        "price_micros": 1200,
        "tracking_token": "AAEC",
    }
    return event("music.AdImpression", {**base, **data})


def search(**data: Any) -> dict[str, Any]:
    base = {
        "user_id": USER,
        "query": "blue",
        "searched_at": "2026-11-26T12:00:00+01:00",
        "result_count": 3,
        "latency_ms": 12.5,
    }
    return event("music.SearchPerformed", {**base, **data})


def with_data(**data: Any) -> dict[str, Any]:
    """A SongSkipped whose data fields are overridden (None deletes the field)."""
    ev = skipped()
    for key, value in data.items():
        if value is None:
            del ev["data"][key]
        else:
            ev["data"][key] = value
    return ev


def with_attrs(**attrs: Any) -> dict[str, Any]:
    """A SongSkipped with attributes (``data`` too) replaced."""
    return skipped() | attrs


def without(*names: str, **over: Any) -> dict[str, Any]:
    ev = skipped(**over)
    for name in names:
        del ev[name]
    return ev


# ------------------------------------------------------------ per-event problems


@dataclass(frozen=True)
class Bad:
    """Bad events sent after one valid SongSkipped in the same batch."""

    make: Callable[[], list[bytes]]
    mentions: tuple[str, ...]


def bad(make: Callable[[], Any], *mentions: str) -> Bad:
    return Bad(lambda: [enc(make())], mentions)


def raw(*items: bytes, mentions: tuple[str, ...]) -> Bad:
    return Bad(lambda: list(items), mentions)


PER_EVENT: dict[str, Bad] = {
    # not an object at all
    "number": raw(b"42", mentions=("JSON object",)),
    "string": raw(b'"hello"', mentions=("JSON object",)),
    "null": raw(b"null", mentions=("JSON object",)),
    "non_objects_mixed": raw(
        b"1", b'"x"', b"null", b"true", b"[]", b"2.5", mentions=("JSON object",)
    ),
    # CloudEvents attributes
    "missing_id": bad(lambda: without("id"), r"'id'"),
    "missing_source": bad(lambda: without("source"), r"'source'"),
    "missing_type": bad(lambda: without("type"), r"'type'"),
    "missing_specversion": bad(lambda: without("specversion"), r"'specversion'"),
    "empty_id": bad(lambda: skipped(id=""), r"\bid\b"),
    "empty_source": bad(lambda: skipped(source=""), r"\bsource\b"),
    "id_not_string": bad(lambda: skipped(id=12345), r"\bid\b"),
    "specversion_0_3": bad(lambda: skipped(specversion="0.3"), r"specversion", r"1\.0"),
    "specversion_number": bad(lambda: skipped(specversion=1.0), r"specversion", r"1\.0"),
    "unknown_type": bad(lambda: skipped(type="music.Nope"), r"music\.Nope", r"known types"),
    "empty_type": bad(lambda: skipped(type=""), r"unknown event type ''"),
    "type_not_string": bad(lambda: skipped(type=7), r"'type'", r"string"),
    "type_null": bad(lambda: skipped(type=None), r"'type'"),
    "time_garbage": bad(lambda: skipped(time="yesterday"), r"\btime\b"),
    "time_without_timezone": bad(lambda: skipped(time="2026-11-26T12:00:00"), r"\btime\b"),
    "time_not_string": bad(lambda: skipped(time=1764158400), r"\btime\b"),
    "subject_not_string": bad(lambda: skipped(subject=5), r"\bsubject\b"),
    # data as a whole
    "data_missing": bad(lambda: without("data"), r"'data'"),
    "data_null": bad(lambda: with_attrs(data=None), r"\bdata\b"),
    "data_not_object": bad(lambda: with_attrs(data=[1, 2]), r"\bdata\b"),
    "data_is_string": bad(lambda: with_attrs(data="{}"), r"\bdata\b"),
    # data fields
    "wrong_field_type": bad(lambda: with_data(position_ms="soon"), r"data\.position_ms"),
    "missing_required_field": bad(lambda: with_data(track_id=None), r"'track_id'", r"\bdata\b"),
    "unknown_data_field": bad(lambda: with_data(mood="happy"), r"'mood'", r"schema"),
    "null_for_non_nullable": bad(
        lambda: skipped() | {"data": skipped()["data"] | {"track_id": None}}, r"data\.track_id"
    ),
    "int32_overflow": bad(lambda: with_data(position_ms=2**31), r"data\.position_ms"),
    "int32_underflow": bad(lambda: with_data(position_ms=-(2**31) - 1), r"data\.position_ms"),
    "int64_overflow": bad(lambda: stopped(played_ms=2**63), r"data\.played_ms"),
    "int_beyond_64_bits": bad(lambda: stopped(played_ms=10**30), r"data\.played_ms"),
    "float_for_int": bad(lambda: with_data(position_ms=1.5), r"data\.position_ms"),
    "float32_overflow": bad(lambda: stopped(volume=1e300), r"data\.volume"),
    "timestamp_without_timezone": bad(
        lambda: with_data(skipped_at="2026-11-26T12:00:00"), r"data\.skipped_at"
    ),
    "timestamp_garbage": bad(lambda: with_data(skipped_at="soon-ish"), r"data\.skipped_at"),
    # Avro JSON's epoch integers are accepted (tests/unit/test_avro_json.py), within range
    "timestamp_as_float": bad(lambda: with_data(skipped_at=1764158400.5), r"data\.skipped_at"),
    "timestamp_out_of_range": bad(lambda: with_data(skipped_at=2**62), r"data\.skipped_at"),
    "timestamp_as_bool": bad(lambda: with_data(skipped_at=True), r"data\.skipped_at"),
    "date_as_float": bad(lambda: ad(campaign_day=20000.0), r"data\.campaign_day"),
    "date_out_of_range": bad(lambda: ad(campaign_day=10**7), r"data\.campaign_day"),
    "bad_uuid": bad(lambda: with_data(user_id="not-a-uuid"), r"data\.user_id"),
    "bad_date": bad(lambda: ad(campaign_day="2026-02-30"), r"data\.campaign_day"),
    "bad_base64_bytes": bad(
        lambda: ad(tracking_token="!!not base64!!"),  # noqa: S106 - not a secret
        r"data\.tracking_token",
    ),
    "bad_enum_symbol": bad(lambda: stopped(reason="BORED"), r"data\.reason"),
    "bad_nested_enum": bad(lambda: started(platform="AMIGA"), r"data\.device\.platform"),
    "missing_nested_field": bad(
        lambda: started() | {"data": started()["data"] | {"device": {"platform": "WEB"}}},
        r"'app_version'",
        r"data\.device",
    ),
    "bad_array_item": bad(lambda: with_data(queue_ahead=["t-1", 2]), r"data\.queue_ahead"),
    "bad_map_value": bad(lambda: search(filters={"year": 1999}), r"data\.filters"),
}


def _expected_id(item: Any) -> str | None:
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return item["id"]
    return None


def _assert_not_on_bus(bed: Bed, item: Any) -> None:
    if not isinstance(item, dict):
        return
    type_name, event_id = item.get("type"), _expected_id(item)
    if event_id and type_name in DEMO_TYPES:
        assert event_id not in ids_on_bus(bed, type_name), f"rejected {event_id} is on the bus"


@pytest.mark.parametrize("case", list(PER_EVENT.values()), ids=list(PER_EVENT))
def test_bad_event_is_rejected_and_its_valid_neighbour_accepted(bed: Bed, case: Bad) -> None:
    good = skipped()
    bads = case.make()
    failed_before = len(failed(bed.url))
    response = post(bed.base, b"[" + b",".join([enc(good), *bads]) + b"]")
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["accepted"] == 1, reply
    decoded = [msgspec.json.decode(b) for b in bads]
    rejected = reply["rejected"]
    assert [(r["index"], r["id"]) for r in rejected] == [
        (i + 1, _expected_id(item)) for i, item in enumerate(decoded)
    ]
    for r in rejected:
        assert_reason(r["reason"], case.mentions)

    assert ids_on_bus(bed, SKIPPED).count(good["id"]) == 1, "valid neighbour not on the bus"
    for item in decoded:
        _assert_not_on_bus(bed, item)

    records = failed(bed.url)[failed_before:]
    assert len(records) == len(bads), records
    for r, item, record in zip(rejected, decoded, records, strict=True):
        assert record["status"] == 200
        assert record["index"] == r["index"]
        assert record.get("id") == r["id"]
        assert record["reason"] == r["reason"]
        assert record.get("event") == item, "the rejected event is not kept verbatim"
        assert "body" not in record


# JSON text must be UTF-8 (RFC 8259 8.1); bytes that are not, inside one event's
# string, make only that event invalid.  (string in the event, where the reason says.)
BAD_UTF8: dict[str, tuple[str, str]] = {
    "id": ("evt-utf8", "attribute 'id'"),
    "source": ("/utf8-source", "attribute 'source'"),
    "type": (SKIPPED, "attribute 'type'"),
    "subject": ("utf8-subject", "attribute 'subject'"),
    "data_string": ("t-utf8", "data.track_id"),
    "data_array_item": ("t-queued", "data.queue_ahead[0]"),
    "data_field_name": ("next_track_id", "a field name in data"),
}


@pytest.mark.parametrize("field", list(BAD_UTF8), ids=list(BAD_UTF8))
def test_invalid_utf8_rejects_only_its_event_and_keeps_its_bytes(bed: Bed, field: str) -> None:
    value, where = BAD_UTF8[field]
    ev = skipped(id="evt-utf8", source="/utf8-source", subject="utf8-subject")
    ev["data"] |= {"track_id": "t-utf8", "queue_ahead": ["t-queued"], "next_track_id": "t-n"}
    quoted = enc(value)
    bad_event = enc(ev).replace(quoted, quoted[:2] + b"\xff\xfe\xc3(" + quoted[2:])
    assert bad_event.count(b"\xff") == 1
    good = skipped()
    failed_before = len(failed(bed.url))
    response = post(bed.base, b"[" + enc(good) + b"," + bad_event + b"]")
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["accepted"] == 1, reply
    [rejected] = reply["rejected"]
    assert rejected["index"] == 1
    assert rejected["id"] == (None if field == "id" else "evt-utf8")
    assert_reason(rejected["reason"], ("invalid UTF-8", re.escape(where), r"byte \d+"))
    assert ids_on_bus(bed, SKIPPED).count(good["id"]) == 1, "valid neighbour not on the bus"
    assert "evt-utf8" not in ids_on_bus(bed, SKIPPED)

    [record] = failed(bed.url)[failed_before:]  # the stream still reads as JSON
    assert (record["status"], record["index"], record["reason"]) == (200, 1, rejected["reason"])
    assert "event" not in record
    assert base64.b64decode(record["body"]) == bad_event, "the rejected bytes are not kept"


# ---------------------------------------------------------- whole-body problems


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(BATCH))
    plain: bytes | None = None  # the body with its Content-Encoding undone, if it can be
    chunked: bool = False  # stream without Content-Length


@dataclass(frozen=True)
class Whole:
    make: Callable[[Settings], Request]
    status: int
    mentions: tuple[str, ...]
    kept: bool | None = None  # in the failed stream? None: not checked


def _batch(*events: dict[str, Any]) -> bytes:
    return enc(list(events))


def _encoded(plain: bytes | None, encoding: str, body: bytes | None = None) -> Request:
    """``plain`` encoded, or ``body`` as is (``plain`` None: it does not decode)."""
    if body is None:
        assert plain is not None
        body = gzip.compress(plain) if encoding == "gzip" else zstd(plain)
    return Request(body, {**BATCH, "content-encoding": encoding}, plain=plain)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _oversized_event(s: Settings) -> Request:
    big = skipped(subject="x" * s.max_event_bytes)
    return Request(_batch(skipped(), big))


def _oversized_body(s: Settings) -> Request:
    filler = b" " * (s.max_body_bytes + 1)
    return Request(b"[" + enc(skipped()) + filler + b"]")


def _oversized_body_chunked(s: Settings) -> Request:
    return Request(_oversized_body(s).body, chunked=True)


def _bomb(s: Settings, encoding: str) -> Request:
    plain = b"[" + b" " * (8 * s.max_body_bytes) + b"]"
    body = gzip.compress(plain) if encoding == "gzip" else zstd(plain)
    return _encoded(None, encoding, body)


def _too_many_events(s: Settings) -> Request:
    count = max(100_000, s.max_events_per_request + 1)
    return Request(b"[" + b",".join([b"{}"] * count) + b"]")


def _fixed(body: bytes, **headers: str) -> Callable[[Settings], Request]:
    return lambda _: Request(body, {**BATCH, **headers} if headers else dict(BATCH))


def _truncated_json(_: Settings) -> Request:
    body = _batch(skipped(), skipped())
    return Request(body[: len(body) // 2])


WHOLE: dict[str, Whole] = {
    "not_json": Whole(_fixed(b"this is not json"), 400, ("not valid JSON",), kept=True),
    "truncated_json": Whole(_truncated_json, 400, ("JSON", "truncated"), kept=True),
    "nan_literal": Whole(_fixed(b'[{"x": NaN}]'), 400, ("not valid JSON",), kept=True),
    "trailing_garbage": Whole(
        lambda _: Request(_batch(skipped()) + b" trailing"), 400, ("JSON",), kept=True
    ),
    "empty_body": Whole(_fixed(b""), 400, ("JSON",), kept=True),
    # Parseable and nothing to keep (validate.EmptyBatch): storage not checked.
    "empty_array": Whole(_fixed(b"[]"), 400, ("empty",)),
    "object_in_batch_mode": Whole(lambda _: Request(enc(skipped())), 400, ("array",), kept=True),
    "string_in_batch_mode": Whole(_fixed(b'"events"'), 400, ("array",), kept=True),
    "structured_mode_not_json": Whole(
        _fixed(b"{oops", **STRUCTURED), 400, ("not valid JSON",), kept=True
    ),
    "deeply_nested_body": Whole(
        _fixed(b"[" * DEEP + b"]" * DEEP), 400, ("nested too deeply",), kept=True
    ),
    "deeply_nested_data": Whole(
        lambda _: Request(
            b"[" + enc(skipped()) + b',{"data":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}]"
        ),
        400,
        ("nested too deeply",),
        kept=True,
    ),
    "wrong_content_type_text_plain": Whole(
        lambda _: Request(_batch(skipped()), {"content-type": "text/plain"}),
        415,
        ("Content-Type", "text/plain"),
        kept=False,
    ),
    "wrong_content_type_xml": Whole(
        lambda _: Request(_batch(skipped()), {"content-type": "application/xml"}),
        415,
        ("Content-Type", "application/xml"),
        kept=False,
    ),
    "no_content_type": Whole(
        lambda _: Request(_batch(skipped()), {}), 415, ("Content-Type",), kept=False
    ),
    "binary_mode_data_not_json_type": Whole(
        lambda _: Request(
            enc(skipped()["data"]),
            {
                "content-type": "text/plain",
                "ce-specversion": "1.0",
                "ce-id": "x",
                "ce-source": "/t",
                "ce-type": SKIPPED,
            },
        ),
        415,
        ("JSON", "text/plain"),
        kept=False,
    ),
    "oversized_event": Whole(_oversized_event, 413, ("max_event_bytes", r"index 1\b"), kept=False),
    "oversized_body_content_length": Whole(_oversized_body, 413, ("max_body_bytes",), kept=False),
    "oversized_body_chunked": Whole(_oversized_body_chunked, 413, ("max_body_bytes",), kept=False),
    "too_many_events": Whole(_too_many_events, 413, ("max_events_per_request",), kept=False),
    "gzip_bomb": Whole(lambda s: _bomb(s, "gzip"), 413, ("max_body_bytes",), kept=False),
    "zstd_bomb": Whole(lambda s: _bomb(s, "zstd"), 413, ("max_body_bytes",), kept=False),
    "invalid_gzip": Whole(
        lambda _: _encoded(None, "gzip", body=b"this is not gzip"), 400, ("gzip",), kept=True
    ),
    "truncated_gzip": Whole(
        lambda _: _encoded(None, "gzip", gzip.compress(_batch(skipped()))[:-12]),
        400,
        ("gzip", "truncated"),
        kept=True,
    ),
    "gzip_of_not_json": Whole(
        lambda _: _encoded(b"gzipped but not json", "gzip"), 400, ("not valid JSON",), kept=True
    ),
    "invalid_zstd": Whole(
        lambda _: _encoded(None, "zstd", body=b"\x28\xb5\x2f\xfdnot zstd"),
        400,
        ("zstd",),
        kept=True,
    ),
    "truncated_zstd": Whole(
        lambda _: _encoded(None, "zstd", zstd(_batch(skipped()))[:-5]),
        400,
        ("zstd", "truncated"),
        kept=True,
    ),
    "zstd_of_not_json": Whole(
        lambda _: _encoded(b"zstd but not json", "zstd"), 400, ("not valid JSON",), kept=True
    ),
    "unsupported_encoding_br": Whole(
        lambda _: Request(_batch(skipped()), {**BATCH, "content-encoding": "br"}),
        415,
        ("Content-Encoding", "br"),
        kept=False,
    ),
    "stacked_encodings": Whole(
        lambda _: Request(
            gzip.compress(_batch(skipped())), {**BATCH, "content-encoding": "gzip, br"}
        ),
        415,
        ("Content-Encoding",),
        kept=False,
    ),
}


def _send(bed: Bed, request: Request) -> httpx.Response:
    if not request.chunked:
        return httpx.post(
            bed.base + "/v1/events", content=request.body, headers=request.headers, timeout=30
        )

    def chunks() -> Iterator[bytes]:
        step = 64 * 1024
        for start in range(0, len(request.body), step):
            yield request.body[start : start + step]

    return httpx.post(
        bed.base + "/v1/events", content=chunks(), headers=request.headers, timeout=30
    )


def _assert_body_kept(record: dict[str, Any], request: Request, message: str, s: Settings) -> None:
    assert record["status"] == 400
    assert_reason(record["reason"], ())
    assert record["reason"] in message
    assert "body" in record, record
    stored = base64.b64decode(record["body"])
    encoding = record.get("content_encoding")
    sent_encoding = request.headers.get("content-encoding")
    # The record must let a person (or a replay) get the request back: either the
    # body as sent with its encoding named, or the decoded body with no encoding.
    as_sent = (sent_encoding, request.body[: s.failed_body_cap])
    decoded = (None, request.plain[: s.failed_body_cap]) if request.plain is not None else None
    assert (encoding, stored) in (as_sent, decoded), (
        f"stored body {stored[:80]!r} with content_encoding {encoding!r} is not the request "
        f"(sent {request.body[:80]!r} with content-encoding {sent_encoding!r})"
    )
    assert record.get("content_type") == request.headers.get("content-type")


@pytest.mark.parametrize("case", list(WHOLE.values()), ids=list(WHOLE))
def test_bad_body_is_refused_whole(bed: Bed, case: Whole) -> None:
    request = case.make(bed.settings)
    failed_before = len(failed(bed.url))
    accepted_before = len(ids_on_bus(bed, SKIPPED))
    response = _send(bed, request)
    no_5xx(bed, response)
    assert response.status_code == case.status, response.text
    message = error_of(response)
    assert_reason(message, case.mentions)

    assert len(ids_on_bus(bed, SKIPPED)) == accepted_before, "a refused request reached the bus"
    records = failed(bed.url)[failed_before:]
    if case.kept is False:
        assert records == []
    elif case.kept:
        assert "failed-events stream" in message
        assert len(records) == 1, records
        _assert_body_kept(records[0], request, message, bed.settings)


# ------------------------------------------------------------- HTTP-level errors


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v1/events", 405, "POST"),
        ("PUT", "/v1/events", 405, "POST"),
        ("DELETE", "/v1/events", 405, "POST"),
        ("PATCH", "/v1/events", 405, "POST"),
        ("POST", "/healthz", 405, "GET"),
        ("GET", "/nope", 404, None),
        ("POST", "/v1/event", 404, None),
        ("POST", "/v1/events/", 404, None),
    ],
)
def test_wrong_method_or_path(
    bed: Bed, method: str, path: str, status: int, allow: str | None
) -> None:
    response = httpx.request(method, bed.base + path, content=_batch(skipped()), headers=BATCH)
    no_5xx(bed, response)
    assert response.status_code == status, response.text
    message = error_of(response)
    if status == 404:
        assert_reason(message, (re.escape(path), "/v1/events"))
    else:
        assert_reason(message, (allow,))
        # RFC 9110 15.5.6: a 405 response MUST carry an Allow header.
        assert allow in response.headers.get("allow", ""), dict(response.headers)


# ------------------------------------------------------------------ special cases


def test_duplicate_ids_in_one_batch_are_all_accepted(bed: Bed) -> None:
    """The gateway does not dedup: `(source, id)` dedup is the loader's job."""
    first = skipped()
    again = skipped(id=first["id"])  # same (source, id), different data
    response = post(bed.base, [first, again])
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "rejected": []}
    assert ids_on_bus(bed, SKIPPED).count(first["id"]) == 2


def test_event_of_exactly_max_event_bytes_is_accepted(bed: Bed) -> None:
    """A huge string inside the limits is fine, up to the last byte."""
    limit = bed.settings.max_event_bytes
    ev = skipped(track_id="")
    ev["data"]["track_id"] = "é" * ((limit - len(enc(ev))) // 2)
    ev["data"]["track_id"] += "x" * (limit - len(enc(ev)))
    assert len(enc(ev)) == limit
    response = post(bed.base, [skipped(), ev])
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "rejected": []}
    [stored] = [e for e in events_of(bed.url, SKIPPED) if e["id"] == ev["id"]]
    assert stored["data"]["track_id"] == ev["data"]["track_id"]


def test_structured_mode_bad_event_is_rejected(bed: Bed) -> None:
    ev = with_data(position_ms="soon")
    failed_before = len(failed(bed.url))
    response = post(bed.base, ev, headers=STRUCTURED)
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["accepted"] == 0
    [r] = reply["rejected"]
    assert (r["index"], r["id"]) == (0, ev["id"])
    assert_reason(r["reason"], (r"data\.position_ms",))
    [record] = failed(bed.url)[failed_before:]
    assert record["event"] == ev and record["reason"] == r["reason"]


def _binary_headers(**attrs: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "ce-specversion": "1.0"}
    headers.update({"ce-" + k: v for k, v in attrs.items()})
    return headers


def test_binary_mode_missing_ce_id(bed: Bed) -> None:
    data = skipped()["data"]
    failed_before = len(failed(bed.url))
    response = httpx.post(
        bed.base + "/v1/events",
        content=enc(data),
        headers=_binary_headers(source="/bin", type=SKIPPED),
    )
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["accepted"] == 0
    [r] = reply["rejected"]
    assert (r["index"], r["id"]) == (0, None)
    assert_reason(r["reason"], (r"'id'",))
    [record] = failed(bed.url)[failed_before:]
    assert record["reason"] == r["reason"]
    assert (record["source"], record["type"]) == ("/bin", SKIPPED)
    assert record["event"]["data"] == data


def test_binary_mode_body_not_json(bed: Bed) -> None:
    """The body is kept, and with it the ce-* attributes: without them it cannot be replayed."""
    event_id = str(uuid.uuid4())
    body = b'{"user_id": oops'
    failed_before = len(failed(bed.url))
    response = httpx.post(
        bed.base + "/v1/events",
        content=body,
        headers=_binary_headers(id=event_id, source="/bin", type=SKIPPED),
    )
    no_5xx(bed, response)
    assert response.status_code == 400, response.text
    assert_reason(error_of(response), ("binary mode", "JSON"))
    [record] = failed(bed.url)[failed_before:]
    assert record["status"] == 400
    assert base64.b64decode(record["body"]) == body
    assert (record.get("id"), record.get("source"), record.get("type")) == (
        event_id,
        "/bin",
        SKIPPED,
    ), f"binary-mode attributes lost: {record}"


def test_multi_member_gzip_is_one_body(bed: Bed) -> None:
    """RFC 1952: a gzip file may hold several members; gunzip joins them."""
    a, b = skipped(), skipped()
    body = gzip.compress(b"[" + enc(a) + b",") + gzip.compress(enc(b) + b"]")
    assert gzip.decompress(body) == _batch(a, b)
    response = post(bed.base, body, headers={"content-encoding": "gzip"})
    no_5xx(bed, response)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "rejected": []}


# ------------------------------------------------------------------- at the end


def test_gateway_survived_the_battery(bed: Bed) -> None:
    """Runs last in this module: the process is alive, ready, and still accepts."""
    assert bed.gw.alive(), bed.gw.log_tail()
    assert httpx.get(bed.base + "/healthz").status_code == 200
    ready = httpx.get(bed.base + "/readyz")
    assert ready.status_code == 200, ready.text
    batch = [skipped() for _ in range(20)] + [stopped(), started(), ad(), search()]
    response = post(bed.base, batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": len(batch), "rejected": []}
    on_bus = set(ids_on_bus(bed, SKIPPED))
    assert {e["id"] for e in batch[:20]} <= on_bus
    for ev in batch[20:]:
        assert ev["id"] in ids_on_bus(bed, ev["type"])
