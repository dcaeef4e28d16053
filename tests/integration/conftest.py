"""Fixtures that start real nats-server and gateway processes on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hourglass.bus.embedded import free_port
from hourglass.config import Settings
from tests.integration.support import GatewayProcess, NatsServer

pytestmark = pytest.mark.integration

StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "bus")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_gateway(nats_server: NatsServer, tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways with settings overrides; every one is stopped at the end."""
    started: list[GatewayProcess] = []

    def start(*, wait: bool = True, **overrides: Any) -> GatewayProcess:
        base = Settings(
            data_dir=str(tmp_path / "data"),
            port=free_port(),
            bus=nats_server.url,
            stream_replicas=1,
            publish_timeout_s=2.0,
        )
        settings = msgspec.structs.replace(base, **overrides)
        gw = GatewayProcess(settings, log_path=tmp_path / f"gateway-{len(started)}.log")
        started.append(gw)
        gw.start(wait=wait)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def gateway(start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway()
