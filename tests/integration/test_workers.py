"""``hourglass gateway --workers N``: the workers share the port and its load.

Which worker served a request is read off the bus: every bus message carries
``Nats-Msg-Id: <gateway id>-<n>``, and each worker process has its own gateway id.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import time
from pathlib import Path

import msgspec
import nats

from hourglass.bus.embedded import free_port
from hourglass.bus.jetstream import MSG_ID, stream_name
from tests.integration.conftest import StartGateway, base_settings
from tests.integration.support import (
    BATCH,
    GatewayProcess,
    NatsServer,
    events_of,
    gateway_refuses,
    skipped,
)
from tests.integration.test_up import children_of, wait_for

SKIPPED = "music.SongSkipped"


def gateways_on_bus(url: str) -> list[str]:
    """The gateway id of every batch message in the SongSkipped stream, in order."""

    async def run() -> list[str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            name = stream_name(SKIPPED)
            info = await js.stream_info(name)
            ids = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                headers = msg.headers or {}
                if headers.get("Hg-Kind", "batch") == "batch":
                    ids.append(headers[MSG_ID].rsplit("-", 1)[0])
            return ids
        finally:
            await nc.close()

    return asyncio.run(run())


def send_over_fresh_connections(gw: GatewayProcess, connections: int) -> list[str]:
    """Open ``connections`` together, then send one batch on each; the sent ids.

    A worker that is not on the bus yet answers 503; the request is resent on the
    same connection (so to the same worker) until it is accepted.
    """
    conns = [
        http.client.HTTPConnection("127.0.0.1", gw.settings.port, timeout=30)
        for _ in range(connections)
    ]
    for conn in conns:
        conn.connect()
    sent: list[str] = []
    deadline = time.monotonic() + 30
    try:
        for conn in conns:
            batch = [skipped() for _ in range(5)]
            body = msgspec.json.encode(batch)
            while True:
                conn.request("POST", "/v1/events", body=body, headers=BATCH)
                response = conn.getresponse()
                text = response.read()
                if response.status != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert response.status == 200, (response.status, text)
            sent += [e["id"] for e in batch]
    finally:
        for conn in conns:
            conn.close()
    return sent


def test_connections_opened_together_spread_over_workers(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway(workers=2)
    sent = send_over_fresh_connections(gw, 16)
    served_by = gateways_on_bus(nats_server.url)
    assert len(set(served_by)) == 2, f"one worker took every connection: {served_by}"
    assert sorted(e["id"] for e in events_of(nats_server.url, SKIPPED)) == sorted(sent)


def test_a_restarted_worker_serves_its_share_again(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    """The parent keeps each worker's socket: its replacement listens on it again."""
    gw = start_gateway(workers=2)
    assert gw.proc is not None
    pid = gw.proc.pid
    send_over_fresh_connections(gw, 16)
    first = gateways_on_bus(nats_server.url)
    assert len(set(first)) == 2, f"one worker took every connection: {first}"
    workers = set(children_of(pid))
    assert len(workers) == 2, children_of(pid)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        "the replacement worker",
        lambda: len(children_of(pid)) == 2 and victim not in children_of(pid),
        20,
    )
    send_over_fresh_connections(gw, 16)
    then = gateways_on_bus(nats_server.url)[len(first) :]
    assert len(set(then)) == 2, f"one worker took every connection: {then}"
    assert set(then) - set(first), f"the replacement worker served nothing: {first} {then}"


def _gateway_exits(port: int, nats_server: NatsServer, tmp_path: Path) -> str:
    return gateway_refuses(base_settings(nats_server, tmp_path, port=port, workers=2), timeout=30)


def test_a_port_held_by_another_program_is_refused_at_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        stderr = _gateway_exits(port, nats_server, tmp_path)
    assert f"cannot listen on 127.0.0.1:{port}" in stderr, stderr
    assert "in use" in stderr, stderr


def test_a_second_gateway_does_not_join_the_port(
    start_gateway: StartGateway, nats_server: NatsServer, tmp_path: Path
) -> None:
    """SO_REUSEPORT would let it listen beside the first one, silently: it must not."""
    first = start_gateway(workers=2)
    port = first.settings.port
    stderr = _gateway_exits(port, nats_server, tmp_path)
    assert f"cannot listen on 127.0.0.1:{port}" in stderr, stderr
    assert "in use" in stderr, stderr
    assert first.alive()
