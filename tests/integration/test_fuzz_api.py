"""Schemathesis and Hypothesis against one real gateway (and a real nats-server).

The OpenAPI document (``hourglass.gateway.openapi``) drives schemathesis: positive
cases (valid by the document) and negative ones (mutated bodies and headers) are
sent to ``POST /v1/events``, and every documented operation is called.  Each answer
must be documented (status, content type, headers, body schema), never a 5xx, and
every 4xx and every rejection must carry a reason.

On top of that a differential oracle reads each request *as it was sent* and
predicts the gateway's answer from the document's JSON Schemas alone (validated by
``jsonschema_rs``, independent of the msgspec types the gateway compiles from the
same Avro): which mode, 400/415, and exactly which events are rejected.  A valid
event must be accepted; an invalid one must be named.  At the end the streams must
hold exactly what the gateway acknowledged, and the gateway must still be ready.

Bounded for CI: derandomized Hypothesis, no example database, ``EXAMPLES`` cases
per phase (about 10 s in all).
"""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import jsonschema_rs
import msgspec
import pytest
import requests
import schemathesis
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hourglass.bus.embedded import free_port
from hourglass.bus.jetstream import FAILED_STREAM, stream_name
from hourglass.config import Settings
from hourglass.gateway.openapi import BATCH, JSON, STRUCTURED, event_schema, openapi_document
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry
from tests.groups import module
from tests.integration.support import GatewayProcess, NatsServer, event, read_stream
from tests.strategies import valid_data

pytestmark = [pytest.mark.integration, module("fuzz_api")]

# HOURGLASS_FUZZ_EXAMPLES=1000 HOURGLASS_FUZZ_RANDOM=1 for a longer, randomized hunt.
EXAMPLES = int(os.environ.get("HOURGLASS_FUZZ_EXAMPLES", "60"))
MAX_EVENT_BYTES = 256 * 1024
REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
TYPES = REGISTRY.type_names
SKIPPED = "music.SongSkipped"
KEYS_TOML = f'[keys]\n"k-skips" = ["{SKIPPED}"]\n"k-admin" = "*"\n'

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("HOURGLASS_FUZZ_RANDOM"),
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]


# --------------------------------------------------------------------------- bed


@dataclass
class Tally:
    """What the gateway acknowledged, to compare with the streams at the end."""

    accepted: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected: int = 0
    kept_bodies: int = 0  # 400s whose body went to the failed-events stream
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Bed:
    gw: GatewayProcess
    bus: NatsServer
    schema: Any  # schemathesis.BaseSchema
    source: str  # where the document came from: "live" or "in-process"
    session: requests.Session
    tally: Tally = field(default_factory=Tally)

    @property
    def base(self) -> str:
        return self.gw.base


def _document() -> dict[str, Any]:
    """The document as JSON would carry it (what ``/openapi.json`` must serve)."""
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(openapi_document(REGISTRY)))
    return doc


def load_schema(base: str) -> tuple[Any, str]:
    """The live ``/openapi.json`` if the gateway serves it, else the in-process document."""
    local = _document()
    try:
        live = httpx.get(base + "/openapi.json", timeout=5)
    except httpx.HTTPError:
        live = None
    if live is not None and live.status_code == 200:
        served = live.json()
        assert served == local, "the served /openapi.json is not openapi_document(registry)"
        return schemathesis.openapi.from_dict(served), "live"
    return schemathesis.openapi.from_dict(local), "in-process"


def _start(root: Path, nats: NatsServer, name: str, **overrides: Any) -> GatewayProcess:
    settings_ = Settings(
        data_dir=str(root / name),
        port=free_port(),
        bus=nats.url,
        stream_replicas=1,
        publish_timeout_s=2.0,
        **overrides,
    )
    gw = GatewayProcess(settings_, log_path=root / f"{name}.log")
    gw.start()
    return gw


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    server = NatsServer(root / "bus")
    server.start()
    try:
        gw = _start(root, server, "gateway")
        try:
            schema, source = load_schema(gw.base)
            with requests.Session() as session:
                yield Bed(gw, server, schema, source, session)
        finally:
            gw.stop()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyed(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A second gateway on the same bus, with API keys."""
    root: Path = tmp_path_factory.mktemp("fuzz-keys")
    keys = root / "keys.toml"
    keys.write_text(KEYS_TOML)
    gw = _start(root, bed.bus, "keyed", api_keys=str(keys))
    try:
        yield gw
    finally:
        gw.stop()


def healthy(gw: GatewayProcess) -> None:
    assert gw.alive(), gw.log_tail()
    ready = httpx.get(gw.base + "/readyz", timeout=5)
    assert ready.status_code == 200, f"{ready.status_code} {ready.text}\n{gw.log_tail()}"


# ------------------------------------------------------------------------ oracle

VALIDATORS = {
    name: jsonschema_rs.validator_for(event_schema(REGISTRY[name]), validate_formats=True)
    for name in TYPES
}
EVENT_SCHEMAS = {name: event_schema(REGISTRY[name]) for name in TYPES}
CE_ATTRIBUTES = ("id", "source", "type", "specversion", "time", "subject", "dataschema")


class _Invalid(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Invalid("number out of range")
    return value


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(map(_lone_surrogate, value))
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    return False


def parse_json(body: bytes) -> Any:
    """Strict RFC 8259 JSON in UTF-8, as the gateway must read it; _Invalid if not."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Invalid(str(exc)) from None
    if _lone_surrogate(value):  # \ud800 escapes: not Unicode text
        raise _Invalid("lone surrogate")
    return value


def _integers_are_integers(schema: Mapping[str, Any], value: Any) -> bool:
    """Avro (and the gateway) want ``1``, not ``1.0``, where JSON Schema allows both."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if isinstance(value, float) and "integer" in kinds and "number" not in kinds:
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None and not _integers_are_integers(sub, item):
                return False
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return all(_integers_are_integers(schema["items"], item) for item in value)
    return True


def event_valid(ev: Any) -> bool:
    if not isinstance(ev, dict) or ev.get("type") not in VALIDATORS:
        return False
    name = ev["type"]
    return VALIDATORS[name].is_valid(ev) and _integers_are_integers(EVENT_SCHEMAS[name], ev)


@dataclass
class Prediction:
    status: int
    events: list[Any] = field(default_factory=list)

    @property
    def invalid(self) -> dict[int, str | None]:
        """Index -> id of each event the gateway must reject."""
        return {
            i: (ev.get("id") if isinstance(ev.get("id"), str) else None)
            if isinstance(ev, dict)
            else None
            for i, ev in enumerate(self.events)
            if not event_valid(ev)
        }

    @property
    def known_types(self) -> set[str]:
        return {
            ev["type"]
            for ev in self.events
            if isinstance(ev, dict) and ev.get("type") in VALIDATORS
        }


def _media(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def predict(raw_headers: Mapping[str, str], body: bytes) -> Prediction | None:
    """The answer the contract requires, from the request as sent; None: not predicted."""
    headers = {k.lower(): v.strip(" \t") for k, v in raw_headers.items()}
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", *CODECS):
        return Prediction(415)
    try:
        body = CODECS[encoding or "identity"][1](body)
    except _Invalid:
        return Prediction(400)
    media = _media(headers)
    binary = media not in (BATCH, STRUCTURED) and "ce-specversion" in headers
    if binary and media and not (media == JSON or media.endswith("+json")):
        return Prediction(415)
    if not binary and media not in (BATCH, STRUCTURED, JSON):
        return Prediction(415)
    try:
        value = parse_json(body)
    except _Invalid:
        return Prediction(400)
    batch = media == BATCH or (media == JSON and not binary and body.lstrip()[:1] == b"[")
    if batch:
        if not isinstance(value, list):
            return Prediction(400)
        if not value:
            return Prediction(400)
        if any(len(json.dumps(ev).encode()) > MAX_EVENT_BYTES // 2 for ev in value):
            return None  # near max_event_bytes: 413 or not, depending on formatting
        return Prediction(200, value)
    if binary:
        attributes: dict[str, Any] = {
            name: unquote(headers["ce-" + name])
            for name in CE_ATTRIBUTES
            if "ce-" + name in headers
        }
        if media:
            attributes["datacontenttype"] = media
        attributes["data"] = value
        value = attributes
    return Prediction(200, [value])


def _body_of(response: Any) -> bytes:
    body = response.request.body
    if body is None:
        return b""
    return body if isinstance(body, bytes) else body.encode("utf-8")


def _reason(text: Any) -> None:
    assert isinstance(text, str) and text.strip(), f"empty reason: {text!r}"
    assert "Traceback" not in text and "internal error" not in text, text


def judge(
    tally: Tally,
    phase: str,
    headers: Mapping[str, str],
    body: bytes,
    status: int,
    payload: Any,
    *,
    keys: str | None = None,
) -> None:
    """Every answer against the contract; ``keys``: which key was sent to a keyed gateway."""
    tally.statuses[phase, status] += 1
    assert status < 500, f"{status} {payload}"
    if status != 200:
        assert isinstance(payload, dict) and set(payload) == {"error"}, payload
        _reason(payload["error"])
    else:
        assert isinstance(payload, dict) and set(payload) == {"accepted", "rejected"}, payload
        indices = [r["index"] for r in payload["rejected"]]
        assert indices == sorted(set(indices)), payload
        for rejection in payload["rejected"]:
            _reason(rejection["reason"])
            tally.reasons[re.sub(r"`[^`]*`|'[^']*'|\d+", "_", rejection["reason"])[:60]] += 1
    expected = predict(headers, body)
    if keys in ("none", "unknown"):
        expected = Prediction(401)
    elif (
        keys == "k-skips"
        and expected is not None
        and expected.status == 200
        and expected.known_types - {SKIPPED}
    ):
        expected = Prediction(403)
    if expected is None:
        return
    assert status == expected.status, (
        f"expected {expected.status}, got {status} {payload}\n"
        f"headers {dict(headers)}\nbody {body[:2000]!r}"
    )
    if status == 400 and "kept in the failed-events stream" in payload["error"]:
        tally.kept_bodies += 1
    if status != 200:
        return
    got = {r["index"]: r["id"] for r in payload["rejected"]}
    reasons = {r["index"]: r["reason"] for r in payload["rejected"]}
    want = expected.invalid
    assert got == want, (
        f"rejected {sorted(got)}, the document says {sorted(want)}\n"
        f"reasons {reasons}\nevents {json.dumps(expected.events)[:3000]}"
    )
    assert payload["accepted"] == len(expected.events) - len(want), payload
    tally.rejected += len(want)
    for i, ev in enumerate(expected.events):
        if i not in want:
            tally.accepted[ev["type"]] += 1


def run_case(bed: Bed, case: Any, phase: str) -> None:
    response = case.call(base_url=bed.base, session=bed.session, timeout=30)
    case.validate_response(
        response,
        checks=CHECKS,
        excluded_checks=[] if case.meta.generation.mode.is_positive else [positive_data_acceptance],
    )
    if case.operation.path != "/v1/events":
        return
    judge(
        bed.tally,
        phase,
        dict(response.request.headers),
        _body_of(response),
        response.status_code,
        response.json(),
    )


# ------------------------------------------------------------------------- tests


def test_document_is_valid_and_complete(bed: Bed) -> None:
    """The document is valid OpenAPI 3.1; every operation loads; the body has all modes."""
    bed.schema.validate()  # against the OpenAPI 3.1 meta-schema
    labels = set()
    for result in bed.schema.get_all_operations():
        labels.add(result.ok().label)
    assert labels == {
        "POST /v1/events",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
    }
    ingest = bed.schema["/v1/events"]["POST"]
    assert {b.media_type for b in ingest.body} == {BATCH, STRUCTURED, JSON}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_ingest_fuzz(bed: Bed, mode: GenerationMode) -> None:
    operation = bed.schema["/v1/events"]["POST"]
    phase = mode.value

    accepted, rejected = sum(bed.tally.accepted.values()), bed.tally.rejected

    @FUZZ
    @given(case=operation.as_strategy(mode))
    def run(case: Any) -> None:
        run_case(bed, case, phase)

    run()
    healthy(bed.gw)
    answered = sum(n for (p, _), n in bed.tally.statuses.items() if p == phase)
    assert answered >= EXAMPLES // 2, bed.tally.statuses
    if mode is GenerationMode.POSITIVE:  # the generator is not vacuous
        # Say what was answered (CI once had 20 of 60: hg* integers sent as 5.0).
        assert sum(bed.tally.accepted.values()) - accepted >= EXAMPLES // 2, (
            sorted(bed.tally.statuses.items()),
            bed.tally.reasons.most_common(20),
        )
    else:
        assert bed.tally.statuses[phase, 400] > 0 and bed.tally.rejected > rejected, bed.tally


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_get_operations(bed: Bed, path: str) -> None:
    if path == "/openapi.json" and bed.source != "live":
        pytest.skip("the gateway does not serve /openapi.json yet (in-process document used)")
    operation = bed.schema[path]["GET"]

    @settings(FUZZ, max_examples=3)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def run(case: Any) -> None:
        run_case(bed, case, "get")

    run()


def test_unsupported_methods(bed: Bed) -> None:
    """Each documented path answers an undocumented method with 405, Allow and a reason."""
    for path in ("/v1/events", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        documented = {m.upper() for m in bed.schema.raw_schema["paths"][path]}
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            if method in documented:
                continue
            response = httpx.request(method, bed.base + path, timeout=10)
            if path == "/openapi.json" and bed.source != "live":
                assert response.status_code == 404, response.text
            else:
                assert response.status_code == 405, (method, path, response.text)
                assert response.headers.get("allow"), response.headers
            _reason(response.json()["error"])


@FUZZ
@given(
    path=st.text(
        st.characters(codec="ascii", exclude_characters="?#%", min_codepoint=33, max_codepoint=126),
        max_size=20,
    ),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_unknown_paths(bed: Bed, path: str, method: str) -> None:
    if ("/" + path).rstrip("/") in ("/v1/events", "/healthz", "/readyz", "/metrics"):
        return
    if "/" + path == "/openapi.json":
        return
    response = httpx.request(method, f"{bed.base}/x/{path}", timeout=10)
    assert response.status_code == 404, response.text
    _reason(response.json()["error"])


def _valid_events(draw: st.DrawFn, n_max: int = 4) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, n_max))):
        name = draw(st.sampled_from(TYPES))
        data = draw(valid_data(REGISTRY[name].avro))
        out.append(event(name, data, id=str(draw(st.uuids()))))  # drawn: replays are exact
    return out


def _zstd_frames(body: bytes) -> bytes:
    """Every zstd frame of ``body`` (RFC 8878 allows several); _Invalid if one is cut."""
    parts, rest = [], body
    try:
        while rest:
            frame = zstandard.ZstdDecompressor().decompressobj()
            parts.append(frame.decompress(rest))
            if not frame.eof:
                raise _Invalid("truncated zstd frame")
            rest = frame.unused_data
    except zstandard.ZstdError as exc:
        raise _Invalid(str(exc)) from None
    return b"".join(parts)


def _gunzip(body: bytes) -> bytes:
    try:
        return gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as exc:
        raise _Invalid(str(exc)) from None


def _identity(body: bytes) -> bytes:
    return body


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)


CODECS: dict[str, tuple[Any, Any]] = {  # Content-Encoding -> (compress, decompress)
    "gzip": (_gzip, _gunzip),
    "x-gzip": (_gzip, _gunzip),
    "GZIP": (_gzip, _gunzip),
    "zstd": (zstandard.ZstdCompressor().compress, _zstd_frames),
    "identity": (_identity, _identity),
}


@st.composite
def encoded_bodies(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(Content-Encoding, body, what it is)."""
    encoding = draw(st.sampled_from([*CODECS, "br", "deflate"]))
    compress = CODECS[encoding][0] if encoding in CODECS else _identity
    raw = msgspec.json.encode(_valid_events(draw))
    kind = draw(st.sampled_from(["valid", "two-members", "truncated", "garbage", "packed-garbage"]))
    if kind == "garbage":
        return encoding, draw(st.binary(max_size=64)), kind
    if kind == "packed-garbage":
        raw = draw(st.binary(max_size=64))
    body = compress(raw)
    if kind == "two-members":  # one JSON text split over two gzip members / zstd frames
        half = len(raw) // 2
        body = compress(raw[:half]) + compress(raw[half:])
    if kind == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    return encoding, body, kind


@FUZZ
@given(sample=encoded_bodies())
def test_content_encodings(bed: Bed, sample: tuple[str, bytes, str]) -> None:
    encoding, body, kind = sample
    headers = {"content-type": BATCH, "content-encoding": encoding}
    response = httpx.post(bed.base + "/v1/events", content=body, headers=headers, timeout=30)
    status, payload = response.status_code, response.json()
    judge(bed.tally, "encoding", headers, body, status, payload)
    if encoding not in CODECS:
        assert status == 415, payload
    elif kind in ("valid", "two-members"):
        assert status == 200 and payload["rejected"] == [], payload


@st.composite
def binary_events(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A valid event in binary mode: attributes in percent-encoded ce-* headers."""
    name = draw(st.sampled_from(TYPES))
    text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1)
    headers = {
        "content-type": draw(
            st.sampled_from([JSON, "application/json; charset=utf-8", "a/b+json"])
        ),
        "ce-specversion": "1.0",
        "ce-id": quote(draw(text), safe=""),
        "ce-source": quote(draw(text), safe=""),
        "ce-type": name,
    }
    if draw(st.booleans()):
        when = draw(st.datetimes(timezones=st.sampled_from(OFFSETS)))
        headers["ce-time"] = quote(when.isoformat())
    if draw(st.booleans()):
        headers["ce-subject"] = quote(draw(st.text()), safe="")
    return headers, msgspec.json.encode(draw(valid_data(REGISTRY[name].avro)))


@FUZZ
@given(sample=binary_events())
def test_binary_mode_valid_events_accepted(bed: Bed, sample: tuple[dict[str, str], bytes]) -> None:
    headers, body = sample
    response = httpx.post(bed.base + "/v1/events", content=body, headers=headers, timeout=30)
    payload = response.json()
    assert response.status_code == 200 and payload == {"accepted": 1, "rejected": []}, (
        headers,
        body,
        payload,
    )
    judge(bed.tally, "binary", headers, body, response.status_code, payload)


OFFSETS = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=14)),
    dt.timezone(-dt.timedelta(hours=9, minutes=30)),
]

KEY_CHOICES = {
    "none": {},
    "unknown": {"authorization": "Bearer k-nope"},
    "k-skips": {"x-api-key": "k-skips"},
    "k-admin": {"authorization": "Bearer k-admin"},
}


def test_api_keys_fuzz(bed: Bed, keyed: GatewayProcess) -> None:
    """With API keys: 401 without a valid key, 403 for a type the key may not send."""
    operation = bed.schema["/v1/events"]["POST"]

    @FUZZ
    @given(data=st.data(), key=st.sampled_from(sorted(KEY_CHOICES)))
    def run(data: st.DataObject, key: str) -> None:
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(operation.as_strategy(mode))
        response = case.call(
            base_url=keyed.base, session=bed.session, headers=KEY_CHOICES[key], timeout=30
        )
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
        judge(
            bed.tally,
            "keys",
            dict(response.request.headers),
            _body_of(response),
            response.status_code,
            response.json(),
            keys=key,
        )

    run()
    healthy(keyed)
    assert bed.tally.statuses["keys", 401] > 0 and bed.tally.statuses["keys", 403] > 0
    assert bed.tally.statuses["keys", 200] > 0, bed.tally.statuses


def test_streams_hold_what_was_acknowledged(bed: Bed) -> None:
    """Last: every acknowledged event is on its stream, every rejection on HG_FAILED."""
    healthy(bed.gw)
    for name in TYPES:
        on_bus = read_stream(bed.bus.url, stream_name(name))
        assert len(on_bus) == bed.tally.accepted[name], (name, len(on_bus), bed.tally.accepted)
    failed = read_stream(bed.bus.url, FAILED_STREAM)
    events = [r for r in failed if r["status"] == 200]
    bodies = [r for r in failed if r["status"] == 400]
    assert len(events) == bed.tally.rejected
    assert len(bodies) == bed.tally.kept_bodies
    for record in failed:
        _reason(record["reason"])
    print(  # the run's summary, shown with -s
        f"\nfuzz: document {bed.source}; statuses {sorted(bed.tally.statuses.items())}; "
        f"accepted {sum(bed.tally.accepted.values())}, rejected {bed.tally.rejected}, "
        f"bodies kept {bed.tally.kept_bodies}; reasons {bed.tally.reasons.most_common(12)}"
    )
    log = bed.gw.log_path.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]


def test_gateway_survived(bed: Bed) -> None:
    healthy(bed.gw)
