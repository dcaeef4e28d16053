"""Bus down or stream full: 503 with Retry-After, nothing acknowledged, then recovery."""

from __future__ import annotations

import time

import httpx

from tests.integration.conftest import StartGateway
from tests.integration.support import NatsServer, events_of, post, skipped


def test_bus_down_answers_503_then_recovers(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway()
    assert post(gw.base, [skipped()]).status_code == 200
    nats_server.kill()
    lost = skipped()
    started = time.monotonic()
    response = post(gw.base, [lost])
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "bus" in response.json()["error"]
    assert time.monotonic() - started < 5, "a bus outage must be answered quickly"
    assert httpx.get(gw.base + "/readyz").status_code == 503
    assert httpx.get(gw.base + "/healthz").status_code == 200

    nats_server.start()
    gw.wait_ready(20)
    again = skipped()
    assert post(gw.base, [again]).status_code == 200
    ids = {e["id"] for e in events_of(nats_server.url, "music.SongSkipped")}
    assert again["id"] in ids
    assert lost["id"] not in ids, "the 503 request must not have been stored"


def test_full_stream_answers_503_and_keeps_what_it_acknowledged(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway(stream_max_bytes=64 * 1024)
    acked: list[str] = []
    refused = None
    for _ in range(200):
        batch = [skipped() for _ in range(20)]
        response = post(gw.base, batch)
        if response.status_code != 200:
            refused = response
            break
        acked.extend(e["id"] for e in batch)
    assert refused is not None, "the stream never filled up"
    assert refused.status_code == 503, refused.text
    assert "full" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert acked, "some batches should fit before the limit"
    stored = [e["id"] for e in events_of(nats_server.url, "music.SongSkipped")]
    assert set(acked) <= set(stored), "discard-new must never drop acknowledged events"
    assert len(stored) == len(acked), "a refused request must not be partly stored"

    # Recovery: the operator raises the limit; the gateway applies it on start.
    gw.stop()
    gw = start_gateway(stream_max_bytes=64 * 1024 * 1024)
    assert post(gw.base, [skipped()]).status_code == 200
