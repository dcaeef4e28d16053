"""Every acknowledged event survives kill -9 of the gateway and of nats-server."""

from __future__ import annotations

import threading
import time

import httpx
import msgspec

from tests.integration.conftest import StartGateway
from tests.integration.support import BATCH, NatsServer, events_of, skipped


class Sender(threading.Thread):
    """Posts batches back to back and records the ids of every 200."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.acked: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while not self.stop.is_set():
                batch = [skipped() for _ in range(50)]
                try:
                    r = client.post("/v1/events", content=msgspec.json.encode(batch), headers=BATCH)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    assert r.json()["rejected"] == []
                    self.acked.extend(e["id"] for e in batch)

    def wait_for(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acked"
            time.sleep(0.01)


def test_kill_gateway_right_after_acks(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway()
    sender = Sender(gw.base)
    sender.start()
    sender.wait_for(2000)
    gw.kill()  # mid-stream: other requests are in flight at this moment
    sender.stop.set()
    sender.join(10)
    acked = set(sender.acked)
    stored = {e["id"] for e in events_of(nats_server.url, "music.SongSkipped")}
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"


def test_kill_nats_server_right_after_acks(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway()
    sender = Sender(gw.base)
    sender.start()
    sender.wait_for(2000)
    nats_server.kill()
    acked_at_kill = set(sender.acked)
    time.sleep(0.5)  # requests during the outage must not be acknowledged...
    sender.stop.set()
    sender.join(10)
    nats_server.start()  # same store, same port
    stored = {e["id"] for e in events_of(nats_server.url, "music.SongSkipped")}
    acked = set(sender.acked)
    assert acked_at_kill <= stored
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    gw.wait_ready(20)  # ...and the gateway recovers by itself
    r = httpx.post(gw.base + "/v1/events", content=msgspec.json.encode([skipped()]), headers=BATCH)
    assert r.status_code == 200
