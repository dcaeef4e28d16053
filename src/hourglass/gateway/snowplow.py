"""Snowplow's tracker protocol, turned into CloudEvents of type ``snowplow.events``.

``POST /com.snowplowanalytics.snowplow/tp2`` carries a ``payload_data``
self-describing JSON whose ``data`` is an array of events, each an object of
string values; ``GET /i`` carries one event in its query string (the pixel).
Each event becomes one ``snowplow.events`` row (``schemas/snowplow``) named as
Snowplow's ``atomic.events`` names its fields, with ``id`` = ``eid`` and
``source`` = the app id (``aid``) or ``snowplow``: trackers re-stamp ``stm`` on
every retry, so only ``eid`` can tell a retry from a new event.

Why every refusal is a 400: the trackers drop a request only on 400, 401, 403,
410 and 422, and retry anything else — 413 included — forever.  An event that
cannot be stored is rejected alone (kept in the failed stream) and the request
still answered 200, so one bad event never makes a tracker resend its batch.

Per event this is a Python loop over its parameters (strings to numbers and
times, base64 to JSON text): the protocol's values are all strings, so no
schema-driven decode in C can read them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from hourglass.exceptions import Unparseable
from hourglass.gateway.adapt import Converted
from hourglass.gateway.validate import DECODE_ERRORS, Rejection, decode_body, plain

TP2 = "/com.snowplowanalytics.snowplow/tp2"
PIXEL = "/i"
TYPE = "snowplow.events"
NO_APP_SOURCE = "snowplow"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-"
# A 1x1 transparent GIF: the answer to GET /i, as Snowplow's collector sends it.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

EVENTS = {
    "pv": "page_view",
    "pp": "page_ping",
    "se": "struct",
    "ue": "unstruct",
    "tr": "transaction",
    "ti": "transaction_item",
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def _millis(text: str) -> dt.datetime:
    return _EPOCH + int(text) * _MS


def _b64json(text: str) -> str:
    """URL-safe base64 (padding optional, as trackers differ) of JSON, as text."""
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    msgspec.json.decode(decoded)  # must be JSON
    return decoded


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # JSON has no inf or nan: it would be stored as null
        raise ValueError("not a finite number")
    return value


def _json(text: str) -> str:
    msgspec.json.decode(text)
    return text


# parameter -> (column, conversion); every other parameter goes to ``params``.
_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "aid": ("app_id", str),
    "p": ("platform", str),
    "tna": ("name_tracker", str),
    "tv": ("v_tracker", str),
    "dtm": ("dvce_created_tstamp", _millis),
    "stm": ("dvce_sent_tstamp", _millis),
    "ttm": ("true_tstamp", _millis),
    "uid": ("user_id", str),
    "duid": ("domain_userid", str),
    "sid": ("domain_sessionid", str),
    "vid": ("domain_sessionidx", int),
    "tnuid": ("network_userid", str),
    "nuid": ("network_userid", str),
    "ip": ("user_ipaddress", str),
    "ua": ("useragent", str),
    "tz": ("os_timezone", str),
    "lang": ("br_lang", str),
    "res": ("dvce_screenres", str),
    "vp": ("br_viewport", str),
    "url": ("page_url", str),
    "page": ("page_title", str),
    "refr": ("page_referrer", str),
    "se_ca": ("se_category", str),
    "se_ac": ("se_action", str),
    "se_la": ("se_label", str),
    "se_pr": ("se_property", str),
    "se_va": ("se_value", _finite),
    "pp_mix": ("pp_xoffset_min", int),
    "pp_max": ("pp_xoffset_max", int),
    "pp_miy": ("pp_yoffset_min", int),
    "pp_may": ("pp_yoffset_max", int),
    "ue_pr": ("unstruct_event", _json),
    "ue_px": ("unstruct_event", _b64json),
    "co": ("contexts", _json),
    "cx": ("contexts", _b64json),
}
_COLUMNS = {column for column, _ in _FIELDS.values()}


class Body(msgspec.Struct):
    schema: str
    data: list[msgspec.Raw]


class SnowplowApi:
    def __init__(self, max_event_bytes: int) -> None:
        # Half: base64 contexts become JSON text, whose escapes can grow it.
        self._max = max_event_bytes // 2
        self._body = msgspec.json.Decoder(Body)
        self._event = msgspec.json.Decoder(dict[str, str | int | float | bool | None])
        self._encoder = msgspec.json.Encoder()

    def parse_post(self, body: bytes) -> list[msgspec.Raw]:
        shape = (
            'payload_data: {"schema": "iglu:com.snowplowanalytics.snowplow/'
            'payload_data/jsonschema/1-0-4", "data": [events]}'
        )
        payload = decode_body(self._body, body, shape)
        if not payload.schema.startswith(PAYLOAD_DATA):
            raise Unparseable(
                f"schema {payload.schema!r} is not {PAYLOAD_DATA}x (Snowplow's payload_data)"
            )
        if not payload.data:
            raise Unparseable("payload_data holds no events")
        return payload.data

    @staticmethod
    def parse_query(query: bytes) -> list[msgspec.Raw]:
        try:
            params = dict(parse_qsl(query.decode(), keep_blank_values=False, errors="strict"))
        except UnicodeDecodeError as exc:
            raise Unparseable(f"query string is not UTF-8: {exc}") from exc
        if not params:
            raise Unparseable("GET /i needs the event in its query string (e=..&eid=..)")
        return [msgspec.Raw(msgspec.json.encode(params))]

    def convert(
        self, raws: list[msgspec.Raw], user_agent: str | None, now: dt.datetime
    ) -> Converted:
        events: list[dict[str, Any]] = []
        origin: list[int] = []
        rejected: list[Rejection] = []
        for index, raw in enumerate(raws):
            event = self._one(raw, user_agent)
            if isinstance(event, Rejection):
                rejected.append(
                    Rejection(index, event.id, event.source, TYPE, event.reason, event.code, raw)
                )
            else:
                events.append(event)
                origin.append(index)
        body = self._encoder.encode(events) if events else b""
        return Converted(body, origin, rejected, lambda: raws, len(raws))

    def _one(self, raw: msgspec.Raw, user_agent: str | None) -> dict[str, Any] | Rejection:
        def reject(reason: str, eid: str | None = None, source: str | None = None) -> Rejection:
            return Rejection(0, eid, source, TYPE, reason, "invalid_event", raw)

        if len(raw) > self._max:
            return reject(f"event is {len(raw)} bytes, over half of max_event_bytes ({self._max})")
        try:
            params = self._event.decode(raw)
        except DECODE_ERRORS as exc:
            return reject(f"an event must be a JSON object of strings: {plain(exc)}")
        eid = params.pop("eid", None)
        aid = params.get("aid")
        source = aid if isinstance(aid, str) and aid else NO_APP_SOURCE
        if not isinstance(eid, str) or not eid:
            return reject("missing 'eid': Hourglass deduplicates retries by it", None, source)
        e = params.pop("e", None)
        if not isinstance(e, str) or not e:
            return reject("missing 'e' (the event's kind: pv, pp, se, ue, ...)", eid, source)
        data: dict[str, Any] = dict.fromkeys(_COLUMNS)
        data["event_id"] = eid
        data["event"] = EVENTS.get(e, e)
        extra: dict[str, str] = {}
        for name, value in params.items():
            if value is None or value == "":
                continue
            text = value if isinstance(value, str) else _scalar(value)
            spec = _FIELDS.get(name)
            if spec is None:
                extra[name] = text
                continue
            column, convert = spec
            try:
                data[column] = convert(text)
            except (ValueError, OverflowError, binascii.Error, msgspec.DecodeError) as exc:
                return reject(f"parameter {name!r}: cannot read {text[:80]!r} ({exc})", eid, source)
        if data["useragent"] is None:
            data["useragent"] = user_agent
        data["params"] = self._encoder.encode(extra).decode() if extra else None
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": eid,
            "source": source,
            "type": TYPE,
            "data": data,
        }
        if data["dvce_created_tstamp"] is not None:
            event["time"] = data["dvce_created_tstamp"]
        return event


def _scalar(value: int | float | bool) -> str:
    """A tracker that sends a number where the protocol has a string: as text."""
    return msgspec.json.encode(value).decode()
