"""Snowplow tracker-protocol events to CloudEvents (gateway/snowplow.py).

Pure logic; the tracker itself, the answers and the failed stream are tested
against a real gateway in tests/integration/test_analytics_*.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import msgspec
import pytest

from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.exceptions import Unparseable
from hourglass.gateway.adapt import merge
from hourglass.gateway.snowplow import GIF, SnowplowApi
from hourglass.gateway.validate import Checked, Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.schemas import load_registry

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
TYPES = EventTypes(load_registry(Settings(snowplow=True)))
VALIDATOR = Validator(TYPES, Limits(256 * 1024, 10_000))
API = SnowplowApi(256 * 1024)
SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


def _b64(value: Any, *, pad: bool = True) -> str:
    text = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
    return text if pad else text.rstrip("=")


def _run(raws: list[msgspec.Raw], ua: str | None = "python-requests/2") -> Checked:
    converted = API.convert(raws, ua, NOW)
    checked = (
        VALIDATOR.check(Payload(Mode.BATCH, converted.events), NOW) if converted.events else None
    )
    return merge(converted, checked)


def _post(events: list[Any]) -> list[msgspec.Raw]:
    return API.parse_post(json.dumps({"schema": SCHEMA, "data": events}).encode())


CONTEXTS = {
    "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
    "data": [{"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": {"plan": "pro"}}],
}
UE = {
    "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
    "data": {"schema": "iglu:com.acme/skip/jsonschema/1-0-0", "data": {"track": "t"}},
}


def test_a_struct_event_with_its_fields_typed() -> None:
    sent = {
        "e": "se",
        "eid": "e-1",
        "aid": "shop",
        "p": "web",
        "tv": "py-1.1.0",
        "tna": "ns",
        "dtm": "1796308219506",
        "stm": "1796308220000",
        "se_ca": "cat",
        "se_ac": "act",
        "se_va": "3.5",
        "vid": "4",
        "uid": "u-1",
        "cx": _b64(CONTEXTS),
        "custom": "kept",
    }
    checked = _run(_post([sent]))
    assert checked.rejected == []
    (e,) = checked.by_type["snowplow.events"]
    assert (e.id, e.source, e.received_at) == ("e-1", "shop", NOW)
    dtm = dt.datetime(2026, 12, 3, 14, 30, 19, 506000, tzinfo=dt.UTC)
    assert e.time == dtm
    d = e.data
    assert (d.event_id, d.event, d.app_id, d.platform, d.user_id) == (
        "e-1",
        "struct",
        "shop",
        "web",
        "u-1",
    )
    assert (d.dvce_created_tstamp, d.se_value, d.domain_sessionidx) == (dtm, 3.5, 4)
    assert d.dvce_sent_tstamp == dt.datetime(2026, 12, 3, 14, 30, 20, tzinfo=dt.UTC)
    assert json.loads(d.contexts) == CONTEXTS
    assert json.loads(d.params) == {"custom": "kept"}
    assert d.useragent == "python-requests/2"  # the request's, as the tracker set none


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "unpadded"])
def test_base64_with_or_without_padding(pad: bool) -> None:
    checked = _run(_post([{"e": "ue", "eid": "e-2", "ue_px": _b64(UE, pad=pad)}]))
    (e,) = checked.by_type["snowplow.events"]
    assert (e.source, e.data.event, json.loads(e.data.unstruct_event)) == (
        "snowplow",
        "unstruct",
        UE,
    )


def test_the_pixel_query() -> None:
    raws = API.parse_query(b"e=pv&eid=e-3&url=http%3A%2F%2Fx%2Fy&page=T&aid=web&ua=Mozilla")
    (e,) = _run(raws).by_type["snowplow.events"]
    assert (e.data.event, e.data.page_url, e.data.page_title, e.data.useragent) == (
        "page_view",
        "http://x/y",
        "T",
        "Mozilla",
    )
    assert GIF.startswith(b"GIF89a")


BAD = {
    "no eid": ({"e": "se"}, "missing 'eid'"),
    "no e": ({"eid": "x"}, "missing 'e'"),
    "dtm not a number": ({"e": "se", "eid": "x", "dtm": "soon"}, "parameter 'dtm'"),
    "cx not base64 JSON": ({"e": "se", "eid": "x", "cx": "!!!"}, "parameter 'cx'"),
    "co not JSON": ({"e": "se", "eid": "x", "co": "{"}, "parameter 'co'"),
    "se_va infinite": ({"e": "se", "eid": "x", "se_va": "inf"}, "parameter 'se_va'"),
    "a value is an object": ({"e": "se", "eid": "x", "se_ca": {}}, "JSON object of strings"),
    "not an object": ("pv", "JSON object of strings"),
    "too large": ({"e": "se", "eid": "x", "se_la": "x" * 200_000}, "over half of max_event_bytes"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_event_is_rejected_alone(case: str) -> None:
    bad, reason = BAD[case]
    checked = _run(_post([{"e": "pv", "eid": "ok-0"}, bad, {"e": "pp", "eid": "ok-2"}]))
    assert [e.id for e in checked.by_type["snowplow.events"]] == ["ok-0", "ok-2"]
    assert [r.index for r in checked.rejected] == [1]
    assert reason in checked.rejected[0].reason
    assert msgspec.json.decode(bytes(checked.rejected[0].raw)) == bad


def test_numbers_where_strings_belong_are_read_as_text() -> None:
    (e,) = _run(_post([{"e": "se", "eid": 7, "dtm": 1796308219506}])).rejected
    assert "missing 'eid'" in e.reason  # an id must be a string, or dedup could confuse 7 and "7"
    checked = _run(_post([{"e": "se", "eid": "e-7", "dtm": 1796308219506, "se_va": 2}]))
    assert checked.by_type["snowplow.events"][0].data.se_value == 2.0


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        json.dumps({"schema": "iglu:com.acme/other/jsonschema/1-0-0", "data": []}).encode(),
        json.dumps({"schema": SCHEMA, "data": []}).encode(),
        json.dumps([{"e": "pv"}]).encode(),
    ],
    ids=["malformed", "other schema", "no events", "not payload_data"],
)
def test_an_unusable_body_is_refused_whole(body: bytes) -> None:
    with pytest.raises(Unparseable):
        API.parse_post(body)


def test_an_empty_query_is_refused() -> None:
    with pytest.raises(Unparseable, match="query string"):
        API.parse_query(b"")
