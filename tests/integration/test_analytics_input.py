"""Segment's and Snowplow's endpoints of a real gateway: answers, keys, CORS, and
what bad input leaves in the failed stream (the SDKs themselves:
test_analytics_sdks.py)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from hourglass.replay import failed_events, replay
from tests.chaos.conftest import wait_until
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import GatewayProcess, NatsServer, events_of, failed, post, skipped

KEYS = """
[keys]
"wk-web-3f9a" = { name = "website", types = ["segment.*"] }
"k-skips-only" = ["music.SongSkipped"]
"""
ORIGIN = "http://app.test:3000"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


@pytest.fixture
def gw(start_gateway: StartGateway, tmp_path: Path) -> GatewayProcess:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    return start_gateway(segment=True, snowplow=True, api_keys=str(keys), cors_origins=[ORIGIN])


def _track(message_id: str | None, **over: Any) -> dict[str, Any]:
    call = {"type": "track", "messageId": message_id, "userId": "u-1", "event": "Clicked"}
    call.update(over)
    return {k: v for k, v in call.items() if v is not None}


def _batch(gw: GatewayProcess, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs.setdefault("auth", ("wk-web-3f9a", ""))
    return httpx.post(gw.base + "/v1/batch", content=content, timeout=30, **kwargs)


def test_a_batch_with_bad_calls_is_200_and_they_are_kept(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    calls = [
        _track("good-0"),
        _track(None),  # no messageId
        _track("big", properties={"pad": "x" * 40_000}),
        "not a call",
        _track("good-4", type="identify", event=None, traits={"plan": "pro"}),
    ]
    r = _batch(gw, {"batch": calls, "sentAt": "2026-12-03T12:00:00Z"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["success"], answer["accepted"]) == (True, 2)
    assert [(x["index"], x["id"]) for x in answer["rejected"]] == [(1, None), (2, "big"), (3, None)]
    assert "messageId" in answer["rejected"][0]["reason"]
    assert "segment_max_message_bytes" in answer["rejected"][1]["reason"]
    assert "JSON object" in answer["rejected"][2]["reason"]

    tracks = events_of(nats_server.url, "segment.tracks")
    assert [(e["id"], e["source"]) for e in tracks] == [("good-0", "website")]
    assert [e["id"] for e in events_of(nats_server.url, "segment.identifies")] == ["good-4"]
    kept = [f for f in failed(nats_server.url) if f.get("index") is not None]
    assert [(f["index"], f["event"]) for f in kept] == [(1, calls[1]), (2, calls[2]), (3, calls[3])]
    assert all(f["source"] == "website" and f["reason"] for f in kept)
    # the key itself is stored nowhere: the events carry its name
    assert "wk-web-3f9a" not in json.dumps([*tracks, *kept])


def test_where_the_write_key_may_be(gw: GatewayProcess, nats_server: NatsServer) -> None:
    gz = gzip.compress(json.dumps({"batch": [_track("gzip-basic")]}).encode())
    ok = [
        _batch(gw, gz, headers={"content-encoding": "gzip"}),  # RudderStack's default
        _batch(
            gw,
            {"batch": [_track("bearer")]},
            auth=None,
            headers={"authorization": "Bearer wk-web-3f9a"},
        ),
        # analytics.js: the key in the body, as text/plain (no preflight)
        _batch(
            gw,
            {"batch": [_track("in-body")], "writeKey": "wk-web-3f9a"},
            auth=None,
            headers={"content-type": "text/plain"},
        ),
        # analytics.js's short path for a track
        httpx.post(
            gw.base + "/v1/t",
            json=_track("short-path"),
            auth=("wk-web-3f9a", ""),
            timeout=10,
        ),
        httpx.post(
            gw.base + "/v1/track",
            json={**_track("single"), "type": None},
            auth=("wk-web-3f9a", ""),
            timeout=10,
        ),
    ]
    assert [r.status_code for r in ok] == [200] * 5, [r.text for r in ok]
    ids = sorted(e["id"] for e in events_of(nats_server.url, "segment.tracks"))
    assert ids == ["bearer", "gzip-basic", "in-body", "short-path", "single"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"auth": ("wk-nope", "")}, 401, "unauthorized"),
        ({"auth": None}, 401, "unauthorized"),
        ({"auth": ("k-skips-only", "")}, 403, "forbidden"),
    ],
    ids=["wrong key", "no key", "key without the segment types"],
)
def test_a_refused_key_is_a_4xx_rudderstack_can_read(
    gw: GatewayProcess, nats_server: NatsServer, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = _batch(gw, {"batch": [_track("refused")]}, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["message"]  # RudderStack reads both, else retries
    assert events_of(nats_server.url, "segment.tracks") == []


def test_an_unusable_segment_request_is_refused_whole(
    gw: GatewayProcess, nats_server: NatsServer
) -> None:
    r = _batch(gw, b'{"batch": [')
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    assert "kept in the failed-events stream" in r.json()["message"]
    (kept,) = failed(nats_server.url)
    assert kept["body"] and kept["status"] == 400
    # with no key in the headers, a body that does not parse is not stored
    r = _batch(gw, b"{nope", auth=None)
    assert r.status_code == 401
    assert len(failed(nats_server.url)) == 1
    big = {"batch": [_track(f"m{i}", properties={"pad": "x" * 1000}) for i in range(600)]}
    r = _batch(gw, big)  # refused whole, but kept: the SDKs drop a batch on a 4xx
    assert r.status_code == 400 and "segment_max_batch_bytes" in r.json()["message"]
    assert len(failed(nats_server.url)) == 2
    r = httpx.get(gw.base + "/v1/batch", timeout=10)
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert events_of(nats_server.url, "segment.tracks") == []


def test_snowplow_answers(gw: GatewayProcess, nats_server: NatsServer) -> None:
    events = [{"e": "se", "eid": "sp-0", "aid": "shop"}, {"e": "se"}, {"e": "pv", "eid": "sp-2"}]
    r = httpx.post(gw.base + TP2, json={"schema": PAYLOAD, "data": events}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    assert [x["index"] for x in r.json()["rejected"]] == [1]
    pixel = httpx.get(gw.base + "/i?e=pv&eid=sp-3&aid=web&url=http%3A%2F%2Fx", timeout=10)
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
    assert pixel.content.startswith(b"GIF89a")
    got = {(e["id"], e["source"]) for e in events_of(nats_server.url, "snowplow.events")}
    assert got == {("sp-0", "shop"), ("sp-2", "snowplow"), ("sp-3", "web")}
    (kept,) = failed(nats_server.url)
    assert (kept["index"], kept["event"]) == (1, events[1])

    # Every refusal a tracker should not resend is a 400: it resends a 413 or 405 forever.
    refusals = [
        httpx.post(gw.base + TP2, content=b"{", timeout=10),
        httpx.post(
            gw.base + TP2, json={"schema": "iglu:x/y/jsonschema/1-0-0", "data": []}, timeout=10
        ),
        httpx.get(gw.base + TP2, timeout=10),
        httpx.post(gw.base + TP2, content=b" " * (9 << 20), timeout=30),  # over max_body_bytes
        httpx.get(gw.base + "/i", timeout=10),
    ]
    assert [r.status_code for r in refusals] == [400] * 5, [r.text for r in refusals]


def test_cors(gw: GatewayProcess, nats_server: NatsServer) -> None:
    asked = {
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-api-key, x-evil",
    }
    pre = httpx.options(gw.base + "/v1/events", headers=asked, timeout=10)
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == "content-type, x-api-key"
    assert "access-control-allow-credentials" not in pre.headers
    assert pre.headers["vary"] == "Origin"

    other = httpx.options(
        gw.base + "/v1/events", headers={**asked, "origin": "http://evil.test"}, timeout=10
    )
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers

    allowed = post(
        gw.base, [skipped(id="from-page")], headers={"origin": ORIGIN, "x-api-key": "k-skips-only"}
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    refused = post(
        gw.base,
        [skipped(id="from-elsewhere")],
        headers={"origin": "http://evil.test", "x-api-key": "k-skips-only"},
    )
    assert refused.status_code == 403 and "cors_origins" in refused.json()["error"]
    ids = [e["id"] for e in events_of(nats_server.url, "music.SongSkipped")]
    assert ids == ["from-page"]
    # a refusal reads as its protocol's clients expect
    segment_refused = httpx.post(
        gw.base + "/v1/batch", json={"batch": []}, headers={"origin": "http://evil.test"}
    )
    assert segment_refused.status_code == 403 and segment_refused.json()["code"] == "forbidden"


def test_the_protocols_are_off_by_default(start_gateway: StartGateway) -> None:
    gw = start_gateway()
    assert httpx.post(gw.base + "/v1/batch", json={"batch": []}, timeout=10).status_code == 404
    assert httpx.post(gw.base + TP2, json={}, timeout=10).status_code == 404


def test_replay_leaves_a_rejected_segment_call_alone(
    start_gateway: StartGateway, start_loader: StartLoader, tmp_path: Path
) -> None:
    """A rejected call is kept as the SDK sent it, not as a CloudEvent:
    ``replay-failed`` counts it and does not post it to /v1/events."""
    common: dict[str, Any] = {"segment": True, "flush_interval_s": 0.5}
    gw = start_gateway(**common)  # it creates the streams the loader waits for
    loader = start_loader(**common)
    r = _batch(gw, {"batch": [_track("kept", userId=None)]}, auth=None)
    assert r.status_code == 200 and r.json()["accepted"] == 0
    wait_until(lambda: failed_events(loader.lake, "segment.tracks") != [], 30, "the rejection")
    result = replay(loader.lake, "segment.tracks", gw.base)
    assert (result.found, result.not_cloudevents, result.accepted, result.rejected) == (1, 1, 0, [])


def test_mutated_bodies_never_get_a_500(gw: GatewayProcess) -> None:
    """Valid requests of each protocol with bytes flipped, cut and repeated, at a
    real gateway: every answer is a 200 or a 4xx, and the gateway lives on."""
    rng = random.Random(20261203)
    seeds = {
        "/v1/batch": json.dumps({"batch": [_track("m-1", properties={"a": [1, {"b": None}]})]}),
        "/v1/identify": json.dumps({"messageId": "m-2", "userId": "u", "traits": {"x": 1}}),
        TP2: json.dumps({"schema": PAYLOAD, "data": [{"e": "se", "eid": "e-1", "dtm": "17963"}]}),
    }
    statuses: list[int] = []
    with httpx.Client(base_url=gw.base, timeout=10, auth=("wk-web-3f9a", "")) as client:
        for path, seed in seeds.items():
            for _ in range(80):
                body = bytearray(seed.encode())
                for _ in range(rng.randint(1, 4)):
                    at = rng.randrange(len(body))
                    op = rng.choice(("flip", "cut", "repeat", "byte"))
                    if op == "flip":
                        body[at] ^= 1 << rng.randrange(8)
                    elif op == "cut":
                        del body[at : at + rng.randint(1, 8)]
                    elif op == "repeat":
                        body[at:at] = body[max(0, at - 6) : at]
                    else:
                        body[at] = rng.choice(b'{}[]",:\\0\xff\xc3')
                    if not body:
                        body = bytearray(b"{")
                statuses.append(client.post(path, content=bytes(body)).status_code)
        pixel = client.get("/i?" + "".join(rng.choice("e=&%zz\xff;eid") for _ in range(40)))
        statuses.append(pixel.status_code)
    assert all(s == 200 or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert {200, 400} <= set(statuses)  # both good and refused bodies were generated
    assert httpx.get(gw.base + "/readyz", timeout=5).status_code == 200
