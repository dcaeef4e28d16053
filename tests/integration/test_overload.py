"""Beyond max_inflight_events the gateway answers 429 with Retry-After and stores nothing."""

from __future__ import annotations

import asyncio

import httpx
import msgspec

from tests.integration.conftest import StartGateway
from tests.integration.support import BATCH, NatsServer, events_of, skipped


def test_overload_answers_429_and_acknowledges_nothing_of_it(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway(max_inflight_events=60, commit_max_wait_ms=50.0)
    batches = [[skipped() for _ in range(30)] for _ in range(40)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.base, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/events", content=msgspec.json.encode(b), headers=BATCH)
                    for b in batches
                )
            )

    responses = asyncio.run(send_all())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses, "60 events in flight cannot hold 40 concurrent requests of 30"
    assert 200 in statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "max_inflight_events" in r.json()["error"]
    stored = {e["id"] for e in events_of(nats_server.url, "music.SongSkipped")}
    for batch, r in zip(batches, responses, strict=True):
        ids = {e["id"] for e in batch}
        if r.status_code == 200:
            assert ids <= stored
        else:
            assert not ids & stored, "a 429 request must not be stored"
