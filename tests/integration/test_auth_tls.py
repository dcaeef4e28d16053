"""API keys, HTTPS and the operational endpoints of a real gateway process."""

from __future__ import annotations

import asyncio
import random
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from hourglass.bus.jetstream import FAILED_STREAM
from hourglass.config import Settings
from hourglass.demo import example
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry
from tests.integration.conftest import StartGateway
from tests.integration.support import NatsServer, event, events_of, gateway_refuses, post, skipped

SKIPPED = "music.SongSkipped"
AD = "music.AdImpression"

KEYS_TOML = f"""
[keys]
"k-skips-only" = ["{SKIPPED}"]
"k-admin" = "*"
"""


def ad_impression(**over: Any) -> dict[str, Any]:
    """A valid ``music.AdImpression`` event, built from the bundled schema."""
    schema = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
    avro = next(s.avro for s in schema if s.type_name == AD)
    data = example(avro, random.Random(3))
    return event(AD, data, **over)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(KEYS_TOML)
    return path


def _messages(url: str, stream: str) -> int:
    """Messages in a stream (``support.read_stream`` cannot read an empty one)."""

    async def run() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(run())


def _ids(url: str, type_name: str) -> list[str]:
    return [e["id"] for e in events_of(url, type_name)]


# --- API keys ---------------------------------------------------------------------------


def test_missing_or_unknown_key_is_401(
    start_gateway: StartGateway, keys_file: Path, nats_server: NatsServer
) -> None:
    gw = start_gateway(api_keys=str(keys_file))
    anchor = skipped()
    assert post(gw.base, [anchor], headers={"x-api-key": "k-admin"}).status_code == 200

    for headers in (
        {},
        {"x-api-key": "k-nope"},
        {"authorization": "Bearer k-nope"},
        {"authorization": "Bearer"},
        {"authorization": "Basic k-admin"},  # right secret, wrong scheme
        {"x-api-key": "k-admin-but-longer"},
        {"x-api-key": "k-admi"},
    ):
        e = skipped()
        r = post(gw.base, [e], headers=headers)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert "error" in r.json()
    # Nothing from the refused requests reached the bus.
    assert _ids(nats_server.url, SKIPPED) == [anchor["id"]]
    s = _samples(httpx.get(gw.base + "/metrics", timeout=5).text)
    assert s[("hourglass_requests_total", (("status", "401"),))] == 7
    assert s[("hourglass_events_accepted_total", (("type", SKIPPED),))] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer k-skips-only"},
        {"x-api-key": "k-skips-only"},
        {"Authorization": "bearer   k-skips-only"},
    ],
    ids=["bearer", "x-api-key", "bearer-lowercase-padded"],
)
def test_key_accepted_in_either_header(
    start_gateway: StartGateway, keys_file: Path, nats_server: NatsServer, headers: dict[str, str]
) -> None:
    gw = start_gateway(api_keys=str(keys_file))
    e = skipped()
    r = post(gw.base, [e], headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "rejected": []}
    assert _ids(nats_server.url, SKIPPED) == [e["id"]]


def test_type_not_allowed_for_key_is_403_and_nothing_lands(
    start_gateway: StartGateway, keys_file: Path, nats_server: NatsServer
) -> None:
    gw = start_gateway(api_keys=str(keys_file))
    limited = {"authorization": "Bearer k-skips-only"}
    admin = {"x-api-key": "k-admin"}
    # One event in each stream first, so both streams have a known content.
    before_skip, before_ad = skipped(), ad_impression()
    assert post(gw.base, [before_skip, before_ad], headers=admin).json() == {
        "accepted": 2,
        "rejected": [],
    }

    # A mixed batch: the allowed SongSkipped must not land either.
    mixed = [skipped(), ad_impression()]
    r = post(gw.base, mixed, headers=limited)
    assert r.status_code == 403, r.text
    assert AD in r.json()["error"]
    assert SKIPPED not in r.json()["error"]

    # Only a forbidden type.
    r = post(gw.base, [ad_impression()], headers=limited)
    assert r.status_code == 403, r.text
    assert AD in r.json()["error"]

    # A forbidden type that is also invalid is still refused, not kept as a rejection.
    bad_ad = ad_impression()
    bad_ad["data"]["duration_ms"] = "long"
    r = post(gw.base, [skipped(), bad_ad], headers=limited)
    assert r.status_code == 403, r.text
    assert AD in r.json()["error"]

    assert _ids(nats_server.url, SKIPPED) == [before_skip["id"]]
    assert _ids(nats_server.url, AD) == [before_ad["id"]]
    assert _messages(nats_server.url, FAILED_STREAM) == 0

    # The limited key still sends its own type.
    ok = skipped()
    r = post(gw.base, [ok], headers=limited)
    assert r.status_code == 200, r.text
    assert _ids(nats_server.url, SKIPPED) == [before_skip["id"], ok["id"]]


def test_star_key_sends_any_type(
    start_gateway: StartGateway, keys_file: Path, nats_server: NatsServer
) -> None:
    gw = start_gateway(api_keys=str(keys_file))
    batch = [skipped(), ad_impression(), skipped()]
    r = post(gw.base, batch, headers={"authorization": "Bearer k-admin"})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 3, "rejected": []}
    assert sorted(_ids(nats_server.url, SKIPPED)) == sorted([batch[0]["id"], batch[2]["id"]])
    assert _ids(nats_server.url, AD) == [batch[1]["id"]]


@pytest.mark.parametrize(
    "text",
    [
        "[keys\n'k' = ",  # not TOML
        "[other]\nk = '*'\n",  # no [keys] table
        "[keys]\n",  # empty [keys] table
        "[keys]\n'k-1' = 42\n",  # value neither "*" nor a list
        "[keys]\n'k-1' = ['music.SongSkipped', 7]\n",  # list with a non-string
    ],
    ids=["not-toml", "no-keys-table", "empty-keys", "number-value", "mixed-list"],
)
def test_malformed_keys_file_stops_gateway(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad-keys.toml"
    path.write_text(text)
    _assert_gateway_refuses_keys_file(tmp_path, path)


def test_missing_keys_file_stops_gateway(tmp_path: Path) -> None:
    _assert_gateway_refuses_keys_file(tmp_path, tmp_path / "no-such-keys.toml")


def _assert_gateway_refuses_keys_file(tmp_path: Path, path: Path) -> None:
    """The gateway exits non-zero, names the file, and prints no traceback."""
    settings = Settings(
        data_dir=str(tmp_path / "data"),
        port=0,
        bus="nats://127.0.0.1:1",  # never reached: the keys file is read first
        api_keys=str(path),
    )
    assert str(path) in gateway_refuses(settings)


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_https_with_trusted_ca(
    start_gateway: StartGateway, nats_server: NatsServer, tmp_path: Path, ca: trustme.CA
) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))

    gw = start_gateway(tls_cert=str(cert_path), tls_key=str(key_path))
    assert gw.base.startswith("https://")

    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    e = skipped()
    r = post(gw.base, [e], verify=trusted)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "rejected": []}
    assert httpx.get(gw.base + "/readyz", verify=trusted, timeout=5).status_code == 200
    assert _ids(nats_server.url, SKIPPED) == [e["id"]]

    # A client that does not trust the CA refuses the server.
    with pytest.raises(httpx.ConnectError):
        post(gw.base, [skipped()], verify=ssl.create_default_context())

    # Plain HTTP to the HTTPS port gets no HTTP answer.
    plain = "http://" + gw.base.removeprefix("https://")
    with pytest.raises(httpx.HTTPError):
        response = post(plain, [skipped()])
        pytest.fail(f"plain http was answered {response.status_code}: {response.text}")

    assert gw.alive(), gw.log_tail()
    assert _ids(nats_server.url, SKIPPED) == [e["id"]]


def test_tls_cert_without_key_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    cert_path = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hourglass",
            "gateway",
            "--tls-cert",
            str(cert_path),
            "--bus",
            "nats://127.0.0.1:1",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0, done
    assert "tls_key" in done.stderr, done.stderr


# --- metrics and health -----------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_and_health(start_gateway: StartGateway) -> None:
    gw = start_gateway()
    health = httpx.get(gw.base + "/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert httpx.get(gw.base + "/readyz", timeout=5).status_code == 200

    bad = skipped()
    bad["data"]["position_ms"] = "soon"
    unknown = skipped(type="music.NoSuchThing")
    r1 = post(gw.base, [skipped(), skipped(), bad])
    r2 = post(gw.base, [skipped(), unknown])
    r3 = post(gw.base, b"{not json")
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 400)
    assert r1.json()["accepted"] == 2 and r2.json()["accepted"] == 1

    response = httpx.get(gw.base + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert f'hourglass_events_accepted_total{{type="{SKIPPED}"}} 3.0' in text.splitlines()

    s = _samples(text)
    assert s[("hourglass_events_accepted_total", (("type", SKIPPED),))] == 3
    rejected = {
        labels: v for (name, labels), v in s.items() if name == "hourglass_events_rejected_total"
    }
    assert rejected == {
        (("reason", "invalid_data"), ("type", SKIPPED)): 1,
        (("reason", "unknown_type"), ("type", "music.NoSuchThing")): 1,
        (("reason", "unparseable"), ("type", "")): 1,
    }
    assert s[("hourglass_requests_total", (("status", "200"),))] == 2
    assert s[("hourglass_requests_total", (("status", "400"),))] == 1

    # Histograms: every bucket line, a +Inf bucket equal to the count, and a sum.
    for histogram, at_least in (
        ("hourglass_request_seconds", 3),
        ("hourglass_publish_seconds", 2),
        ("hourglass_bus_message_bytes", 2),
        ("hourglass_bus_message_events", 2),
    ):
        count = s[(histogram + "_count", ())]
        assert count >= at_least, (histogram, count)
        assert s[(histogram + "_bucket", (("le", "+Inf"),))] == count
        assert s[(histogram + "_sum", ())] > 0
        assert f"# TYPE {histogram} histogram" in text
    assert "# TYPE hourglass_inflight_events gauge" in text
    assert s[("hourglass_inflight_events", ())] == 0
    assert s[("hourglass_bus_connected", ())] == 1


def test_unknown_path_and_wrong_method(start_gateway: StartGateway) -> None:
    gw = start_gateway()
    assert httpx.get(gw.base + "/nope", timeout=5).status_code == 404
    assert httpx.get(gw.base + "/v1/events", timeout=5).status_code == 405
    assert httpx.post(gw.base + "/metrics", timeout=5).status_code == 405
