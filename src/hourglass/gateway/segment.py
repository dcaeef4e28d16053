"""Segment's HTTP API (which RudderStack's SDKs speak too), turned into CloudEvents.

``POST /v1/batch`` carries ``{"batch": [call, ...], "sentAt", "writeKey"?}``;
``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group`` and
``/v1/alias`` carry one call, its kind named by the path.  Each call becomes one
event of the warehouse table Segment would write (``segment.tracks``, ...:
``schemas/segment``), with ``id`` = ``messageId`` and ``source`` = the write
key's name, so the loader's ``(source, id)`` dedup removes the copies an SDK's
retries make.  A track whose name a schema claims (its top-level attribute
``"hourglass.segment_event": "<event name>"``) also becomes an event of that
type, whose ``data`` is the track's ``properties``: like Segment's own per-event
tables, the row in ``segment.tracks`` is always there (with the user's ids and
context: join on ``id``), and the typed row is validated against its schema (a
failure rejects only the typed copy).

Why the answers are what they are: both SDKs drop a batch on a 4xx other than
429 and retry a 5xx; RudderStack's takes only exactly 200 as success and reads
``code``/``message`` from a JSON error body (without them it retries a 4xx for
minutes).  So a batch with bad calls in it is answered 200, the bad ones named
and kept in the failed stream, and a 4xx is only for a batch that is unusable
as a whole.

The calls are decoded in one msgspec call into :class:`Call` (their JSON
objects kept as raw text); building the events is one short Python loop per
call, then one encode — the validator decodes the result in C again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.exceptions import BodyTooLarge, ConfigError
from hourglass.gateway.adapt import Converted
from hourglass.gateway.validate import DECODE_ERRORS, Rejection, decode_body, plain

TABLES = {
    "track": "segment.tracks",
    "identify": "segment.identifies",
    "page": "segment.pages",
    "screen": "segment.screens",
    "group": "segment.groups",
    "alias": "segment.aliases",
}
# analytics.js (analytics-next) posts to the short paths: /v1/t, /v1/b, ...
PATHS = {
    "/v1/batch": None,
    "/v1/b": None,
    **{f"/v1/{call}": call for call in TABLES},
    **{f"/v1/{call[0]}": call for call in TABLES if call != "screen"},
    "/v1/s": "screen",
}
EVENT_ATTRIBUTE = "hourglass.segment_event"
REFUSED = "forbidden_type"  # a rejection's code: the key may not send the typed copy
NO_KEY_SOURCE = "segment"  # the source of every call when the gateway has no keys file

_NULL = msgspec.Raw(b"null")
_KINDS = ", ".join(TABLES)


class Call(msgspec.Struct, rename="camel"):
    """The fields of a Segment call that Hourglass reads (others are ignored,
    as by Segment's warehouses)."""

    type: str | None = None
    message_id: str | None = None
    user_id: str | int | None = None
    anonymous_id: str | int | None = None
    timestamp: dt.datetime | None = None
    original_timestamp: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    channel: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    group_id: str | int | None = None
    previous_id: str | int | None = None
    context: msgspec.Raw = _NULL
    integrations: msgspec.Raw = _NULL
    properties: msgspec.Raw = _NULL
    traits: msgspec.Raw = _NULL
    write_key: str | None = None


class Batch(msgspec.Struct, rename="camel"):
    batch: list[Call]
    sent_at: dt.datetime | None = None
    write_key: str | None = None


class RawBatch(msgspec.Struct, rename="camel"):
    batch: list[msgspec.Raw]
    write_key: Any = None


@dataclass
class Parsed:
    """A request's calls, before the write key is known."""

    calls: list[Call | None]  # None: a call that did not decode (``early`` says why)
    raws: Callable[[], list[msgspec.Raw]]  # each call's text, for the failed stream
    write_key: str | None
    sent_at: dt.datetime | None
    early: dict[int, str] = field(default_factory=dict)


class SegmentApi:
    def __init__(self, types: EventTypes, settings: Settings) -> None:
        self._types = types
        self._max_call = settings.segment_max_message_bytes
        self._max_batch = settings.segment_max_batch_bytes
        self._batch = msgspec.json.Decoder(Batch)
        self._one = msgspec.json.Decoder(Call)
        self._raw_batch = msgspec.json.Decoder(RawBatch)
        self._raw_one = msgspec.json.Decoder(msgspec.Raw)
        self._encoder = msgspec.json.Encoder()
        self.mapped: dict[str, str] = {}  # event name -> the type that claims it
        for schema in types.registry:
            name = schema.avro.get(EVENT_ATTRIBUTE)
            if isinstance(name, str):
                if (first := self.mapped.get(name)) is not None:
                    raise ConfigError(
                        f"types {first} and {schema.type_name} both claim the Segment event "
                        f"{name!r} ({EVENT_ATTRIBUTE}): one type per event name"
                    )
                self.mapped[name] = schema.type_name

    def parse(self, body: bytes, call: str | None) -> Parsed:
        """Decode a body (already decompressed): one call, or a batch of them."""
        if len(body) > self._max_batch:
            raise BodyTooLarge(
                f"body is {len(body)} bytes, over segment_max_batch_bytes ({self._max_batch})"
            )
        if call is not None:
            return self._parse_one(body, call)
        try:
            batch = self._batch.decode(body)
        except DECODE_ERRORS:
            return self._parse_each(body)
        raws = _lazy(lambda: self._raw_batch.decode(body).batch)
        parsed = Parsed(list(batch.batch), raws, batch.write_key, batch.sent_at)
        if len(body) > self._max_call:
            self._check_sizes(parsed)
        return parsed

    def _parse_one(self, body: bytes, call: str) -> Parsed:
        raw = decode_body(self._raw_one, body, "JSON")
        try:
            one = self._one.decode(raw)
        except DECODE_ERRORS as exc:
            parsed = Parsed([None], lambda: [raw], None, None, {0: _reason(exc)})
        else:
            one.type = call  # the path names the kind
            parsed = Parsed([one], lambda: [raw], one.write_key, one.sent_at)
        self._check_sizes(parsed)
        return parsed

    def _parse_each(self, body: bytes) -> Parsed:
        """The slow path, for a batch with a call that does not decode: each in turn."""
        shape = 'a JSON object with "batch": an array of calls'
        raw_batch = decode_body(self._raw_batch, body, shape)
        raws = raw_batch.batch
        key = raw_batch.write_key if isinstance(raw_batch.write_key, str) else None
        try:
            sent_at = msgspec.json.decode(body, type=_SentAt).sent_at
        except DECODE_ERRORS:
            sent_at = None
        parsed = Parsed([], lambda: raws, key, sent_at)
        for index, raw in enumerate(raws):
            try:
                parsed.calls.append(self._one.decode(raw))
            except DECODE_ERRORS as exc:
                parsed.calls.append(None)
                parsed.early[index] = _reason(exc)
        self._check_sizes(parsed)
        return parsed

    def _check_sizes(self, parsed: Parsed) -> None:
        limit = self._max_call
        for index, raw in enumerate(parsed.raws()):
            if len(raw) > limit:
                parsed.early[index] = (
                    f"call is {len(raw)} bytes, over segment_max_message_bytes ({limit})"
                )

    def convert(
        self,
        parsed: Parsed,
        source: str,
        now: dt.datetime,
        may_send: Callable[[str], bool] = lambda _: True,
    ) -> Converted:
        """The events of ``parsed``'s calls; those that cannot be events are rejected.

        A typed copy of a track whose type the key may not send (``may_send``) is
        rejected alone, so a key limited to ``segment.*`` still sends its tracks."""
        refused: list[Rejection] = []
        events: list[dict[str, Any]] = []
        origin: list[int] = []
        early = parsed.early
        mapped = self.mapped
        for index, c in enumerate(parsed.calls):
            if c is None or index in early:
                continue
            problem = _problem(c)
            if problem is not None:
                early[index] = problem
                continue
            table = TABLES[c.type]  # type: ignore[index]  # _problem checked it
            event = _event(c, table, source, now, parsed.sent_at)
            events.append(event)
            origin.append(index)
            claimed = mapped.get(c.event) if c.type == "track" and c.event else None
            if claimed is not None and not may_send(claimed):
                reason = f"this write key may not send type {claimed} (the typed copy)"
                refused.append(
                    Rejection(
                        index, c.message_id, source, claimed, reason, REFUSED, parsed.raws()[index]
                    )
                )
            elif claimed is not None:
                typed = {
                    "specversion": "1.0",
                    "id": c.message_id,
                    "source": source,
                    "type": claimed,
                    "data": c.properties if c.properties != _NULL else {},
                }
                if c.timestamp is not None:
                    typed["time"] = event["time"]
                events.append(typed)
                origin.append(index)
        rejected = refused
        if early:
            raws = parsed.raws()
            for index, reason in sorted(early.items()):
                head = parsed.calls[index] or _head(raws[index])
                message_id = head.message_id if isinstance(head.message_id, str) else None
                kind = TABLES.get(head.type) if isinstance(head.type, str) else None
                rejected.append(
                    Rejection(index, message_id, source, kind, reason, "invalid_call", raws[index])
                )
            rejected.sort(key=lambda r: r.index)
        body = self._encoder.encode(events) if events else b""
        return Converted(body, origin, rejected, parsed.raws, len(parsed.calls))


class _Head(msgspec.Struct, rename="camel"):
    type: Any = None
    message_id: Any = None


def _head(raw: msgspec.Raw) -> _Head:
    """What can be told of a call that did not decode, to name it."""
    try:
        return msgspec.json.decode(raw, type=_Head)
    except DECODE_ERRORS:
        return _Head()


class _SentAt(msgspec.Struct, rename="camel"):
    sent_at: dt.datetime | None = None


def _lazy(make: Callable[[], list[msgspec.Raw]]) -> Callable[[], list[msgspec.Raw]]:
    cache: list[list[msgspec.Raw]] = []

    def get() -> list[msgspec.Raw]:
        if not cache:
            cache.append(make())
        return cache[0]

    return get


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "call is nested too deeply to parse"
    text = plain(exc)
    return "a call must be a JSON object" if text.startswith("Expected `object`") else text


def _problem(c: Call) -> str | None:
    """Why a decoded call cannot be stored, per Segment's spec; None if it can."""
    if c.type is None:
        return f"missing 'type' ({_KINDS})"
    if c.type not in TABLES:
        return f"unknown call type {c.type!r} ({_KINDS})"
    if not c.message_id:
        return "missing 'messageId': Hourglass deduplicates retries by it"
    if c.user_id is None and c.anonymous_id is None:
        return "a call needs 'userId' or 'anonymousId'"
    if c.type == "track" and not c.event:
        return "a track needs 'event'"
    if c.type == "group" and c.group_id is None:
        return "a group call needs 'groupId'"
    if c.type == "alias" and (c.previous_id is None or c.user_id is None):
        return "an alias needs 'previousId' and 'userId'"
    return None


def _event(
    c: Call, table: str, source: str, now: dt.datetime, batch_sent: dt.datetime | None
) -> dict[str, Any]:
    timestamp = _aware(c.timestamp)
    data: dict[str, Any] = {
        "messageId": c.message_id,
        "userId": _text(c.user_id),
        "anonymousId": _text(c.anonymous_id),
        "timestamp": timestamp,
        "originalTimestamp": _aware(c.original_timestamp),
        "sentAt": _aware(c.sent_at or batch_sent),
        "receivedAt": now,
        "channel": c.channel,
        "context": _json(c.context),
        "integrations": _json(c.integrations),
    }
    kind = c.type
    if kind == "track":
        data["event"] = c.event
        data["properties"] = _json(c.properties)
    elif kind == "identify":
        data["traits"] = _json(c.traits)
    elif kind in ("page", "screen"):
        data["name"] = c.name
        data["category"] = c.category
        data["properties"] = _json(c.properties)
    elif kind == "group":
        data["groupId"] = _text(c.group_id)
        data["traits"] = _json(c.traits)
    else:
        data["previousId"] = _text(c.previous_id)
    event: dict[str, Any] = {"specversion": "1.0", "id": c.message_id, "source": source}
    event["type"] = table
    if timestamp is not None:
        event["time"] = timestamp
    event["data"] = data
    return event


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    """A timestamp without a zone is UTC (what Segment assumes)."""
    return t.replace(tzinfo=dt.UTC) if t is not None and t.tzinfo is None else t


def _text(value: str | int | None) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def _json(raw: msgspec.Raw) -> str | None:
    return None if raw == _NULL else bytes(raw).decode()
