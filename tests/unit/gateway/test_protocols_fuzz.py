"""Any body at Segment's or Snowplow's adapter: refused whole with Hourglass's own
error, or every item either accepted or rejected under its own index, never an
exception of another kind (which the gateway would answer with a 500).

The bodies are generated near the protocols' shapes (the fields they read, with
values of every JSON type), since random bytes would only test the JSON parser.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.exceptions import InvalidInput
from hourglass.gateway.adapt import Converted, merge
from hourglass.gateway.segment import SegmentApi
from hourglass.gateway.snowplow import SnowplowApi
from hourglass.gateway.validate import Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.schemas import load_registry

SETTINGS = Settings(segment=True, snowplow=True)
TYPES = EventTypes(load_registry(SETTINGS))
VALIDATOR = Validator(TYPES, Limits(SETTINGS.max_event_bytes, SETTINGS.max_events_per_request))
SEGMENT = SegmentApi(TYPES, SETTINGS)
SNOWPLOW = SnowplowApi(SETTINGS.max_event_bytes)
NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(
        ["", "2026-12-03T12:00:00Z", "2026-12-03T12:00:00", "yesterday", "1796308219506"]
    ),
)
json_value = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SEGMENT_FIELDS = [
    "type", "messageId", "userId", "anonymousId", "timestamp", "originalTimestamp", "sentAt",
    "event", "name", "category", "groupId", "previousId", "context", "properties", "traits",
    "integrations", "channel", "writeKey",
]  # fmt: skip
segment_call = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            **{f: json_value for f in SEGMENT_FIELDS},
            "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x"]),
            "messageId": st.text(max_size=12) | json_value,
            "userId": st.text(max_size=12),
        },
    ),
)
SNOWPLOW_FIELDS = ["e", "eid", "aid", "dtm", "stm", "ttm", "vid", "se_va", "pp_mix", "cx", "co",
                   "ue_px", "ue_pr", "url", "uid", "custom"]  # fmt: skip
snowplow_event = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            **{f: st.text(max_size=20) | scalar for f in SNOWPLOW_FIELDS},
            "e": st.sampled_from(["se", "pv", "ue", "zz", ""]),
            "eid": st.text(min_size=1, max_size=12),
        },
    ),
)


def _check(converted: Converted) -> None:
    checked = None
    if converted.events:
        checked = VALIDATOR.check(Payload(Mode.BATCH, converted.events), NOW)
    checked = merge(converted, checked)
    accepted = sum(map(len, checked.by_type.values()))
    assert accepted + len(checked.rejected) == checked.count
    assert all(0 <= r.index < converted.items and r.reason for r in checked.rejected)
    for envelopes in checked.by_type.values():
        # what reaches the bus is NDJSON the loader can read
        for line in msgspec.json.Encoder().encode_lines(envelopes).splitlines():
            assert isinstance(msgspec.json.decode(line), dict)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    calls=st.lists(segment_call, max_size=8),
    extra=st.dictionaries(st.sampled_from(["sentAt", "writeKey", "context"]), json_value),
    call=st.sampled_from([None, None, "track", "identify"]),
)
def test_segment_never_fails_otherwise(
    calls: list[Any], extra: dict[str, Any], call: str | None
) -> None:
    body = json.dumps(calls[0] if call and calls else {"batch": calls, **extra}).encode()
    try:
        parsed = SEGMENT.parse(body, call)
    except InvalidInput:
        return
    _check(SEGMENT.convert(parsed, "website", NOW, lambda t: t != "segment.groups"))


@FUZZ
@given(
    events=st.lists(snowplow_event, max_size=8),
    schema=st.sampled_from(
        ["iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "iglu:x/y/1-0-0"]
    ),
)
def test_snowplow_never_fails_otherwise(events: list[Any], schema: str) -> None:
    body = json.dumps({"schema": schema, "data": events}).encode()
    try:
        raws = SNOWPLOW.parse_post(body)
    except InvalidInput:
        return
    _check(SNOWPLOW.convert(raws, None, NOW))


@FUZZ
@given(query=st.binary(max_size=200))
def test_the_pixel_never_fails_otherwise(query: bytes) -> None:
    try:
        raws = SNOWPLOW.parse_query(query)
    except InvalidInput:
        return
    _check(SNOWPLOW.convert(raws, "ua", NOW))


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_bytes(body: bytes) -> None:
    for raw in (body, gzip.compress(body)):
        try:
            _check(SEGMENT.convert(SEGMENT.parse(raw, None), "w", NOW))
        except InvalidInput:
            pass
        try:
            _check(SNOWPLOW.convert(SNOWPLOW.parse_post(raw), None, NOW))
        except InvalidInput:
            pass
