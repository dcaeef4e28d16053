"""Fixtures that start real nats-server and gateway processes on free ports."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from hourglass.bus.embedded import free_port
from hourglass.config import Settings
from hourglass.schemas import DEMO_SCHEMAS_DIR
from tests.integration.support import (
    S3_CREDENTIALS,
    Bus,
    GatewayProcess,
    HourglassProcess,
    LoaderProcess,
    MotoServer,
    NatsServer,
)

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


def base_settings(nats_server: Bus, tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=str(tmp_path / "data"),
        port=free_port(),
        bus=nats_server.url,
        stream_replicas=1,
        publish_timeout_s=2.0,
    )
    return msgspec.structs.replace(base, **overrides)


P = TypeVar("P", bound=HourglassProcess)


def _starter(
    kind: type[P], name: str, nats_server: Bus, tmp_path: Path
) -> tuple[Callable[..., P], list[P]]:
    """A function starting ``kind`` processes with settings overrides, and their list."""
    started: list[P] = []

    def start(*, wait: bool = True, env: dict[str, str] | None = None, **overrides: Any) -> P:
        settings = base_settings(nats_server, tmp_path, **overrides)
        log = tmp_path / f"{name}-{len(started)}.log"
        proc = kind(settings, log_path=log, env=env or {})
        started.append(proc)
        proc.start(wait=wait)
        return proc

    return start, started


@pytest.fixture
def start_gateway(nats_server: NatsServer, tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways with settings overrides; every one is stopped at the end."""
    start, started = _starter(GatewayProcess, "gateway", nats_server, tmp_path)
    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


@pytest.fixture
def start_loader(nats_server: NatsServer, tmp_path: Path) -> Iterator[StartLoader]:
    """Start loaders (same data dir as the gateways); ``env`` may set a crash point."""
    start, started = _starter(LoaderProcess, "loader", nats_server, tmp_path)
    try:
        yield start
    finally:
        for loader in started:
            loader.stop()


@pytest.fixture
def gateway(start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway()


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A real S3 HTTP API (moto's server) with a ``lake`` bucket; this process and
    the ones it starts get the AWS variables that reach it."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    server = MotoServer(tmp_path / "moto.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def one_type_schemas(tmp_path: Path) -> str:
    """A schemas folder with only ``music.SongSkipped``: one stream, so the order of
    the loader's durable writes (and so ``<point>:<n>``) is deterministic."""
    folder = tmp_path / "schemas"
    folder.mkdir()
    shutil.copy(DEMO_SCHEMAS_DIR / "SongSkipped.avsc", folder / "SongSkipped.avsc")
    return str(folder)
