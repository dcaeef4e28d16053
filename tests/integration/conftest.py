"""Fixtures that start real nats-server and gateway processes on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hourglass.bus.embedded import free_port
from hourglass.config import Settings
from tests.integration.support import GatewayProcess, LoaderProcess, NatsServer

pytestmark = pytest.mark.integration

StartGateway = Callable[..., GatewayProcess]
StartLoader = Callable[..., LoaderProcess]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "bus")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base_settings(nats_server: NatsServer, tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=str(tmp_path / "data"),
        port=free_port(),
        bus=nats_server.url,
        stream_replicas=1,
        publish_timeout_s=2.0,
    )
    return msgspec.structs.replace(base, **overrides)


@pytest.fixture
def start_gateway(nats_server: NatsServer, tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways with settings overrides; every one is stopped at the end."""
    started: list[GatewayProcess] = []

    def start(
        *, wait: bool = True, env: dict[str, str] | None = None, **overrides: Any
    ) -> GatewayProcess:
        settings = base_settings(nats_server, tmp_path, **overrides)
        log = tmp_path / f"gateway-{len(started)}.log"
        gw = GatewayProcess(settings, log_path=log, env=env or {})
        started.append(gw)
        gw.start(wait=wait)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def start_loader(nats_server: NatsServer, tmp_path: Path) -> Iterator[StartLoader]:
    """Start loaders (same data dir as the gateways); ``env`` may set a crash point."""
    started: list[LoaderProcess] = []

    def start(
        *, wait: bool = True, env: dict[str, str] | None = None, **overrides: Any
    ) -> LoaderProcess:
        settings = base_settings(nats_server, tmp_path, **overrides)
        log = tmp_path / f"loader-{len(started)}.log"
        loader = LoaderProcess(settings, log_path=log, env=env or {})
        started.append(loader)
        loader.start(wait=wait)
        return loader

    try:
        yield start
    finally:
        for loader in started:
            loader.stop()


@pytest.fixture
def gateway(start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway()
