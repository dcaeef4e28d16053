"""Run one gateway process: bus link, group committer, ASGI app under uvicorn.

uvicorn (with uvloop and httptools) was picked over granian by measurement;
see docs/gateway.md.  With several gateway processes their parent (``hourglass
up`` or ``hourglass gateway --workers N``) opens the listening sockets and hands
each worker its own as ``HOURGLASS__LISTEN_FD``; a port already in use is then an
error at once, never a silent second listener.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import uvicorn
from nats.aio.client import Client

from hourglass import log
from hourglass.bus import jetstream
from hourglass.bus.embedded import MAX_PAYLOAD, resolve_bus_url
from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.exceptions import BusUnavailable, ConfigError, HourglassError
from hourglass.gateway.app import Gateway
from hourglass.gateway.auth import ApiKeys
from hourglass.gateway.commit import GroupCommitter
from hourglass.gateway.metrics import GatewayMetrics
from hourglass.gateway.watermark import Heartbeat, InFlight
from hourglass.schemas import load_registry

logger = log.get("hourglass.gateway")


class BusLink:
    """The gateway's view of the bus: ready once connected and streams exist.

    Implements the committer's ``Publisher`` protocol; while not connected every
    publish fails fast with :class:`BusUnavailable`.
    """

    def __init__(self, settings: Settings, type_names: list[str], metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.type_names = type_names
        self.partitions = jetstream.partition_counts(settings, type_names)
        self.metrics = metrics
        self.nc: Client | None = None
        self.publisher: jetstream.JetStreamPublisher | None = None
        self.streams_ok = False
        self._setup: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.streams_ok and self.publisher is not None and self.publisher.connected

    async def publish(
        self, subject: str, payload: bytes, msg_id: str, tally: str | None = None
    ) -> int:
        if self.publisher is None or not self.streams_ok:
            raise BusUnavailable("the bus is not ready yet", retry_after=1.0)
        return await self.publisher.publish(subject, payload, msg_id, tally)

    def limits(self) -> jetstream.StreamLimits:
        s = self.settings
        replicas = s.stream_replicas or (3 if s.bus else 1)
        return jetstream.StreamLimits(
            max_bytes=s.stream_max_bytes,
            max_age_s=s.stream_max_age_s,
            replicas=replicas,
            duplicate_window_s=s.duplicate_window_s,
            max_msg_size=-1,
            type_max_bytes={t: s.stream_max_bytes_of(t) for t in self.type_names},
        )

    async def connect(self, url: str, name: str) -> None:
        self.nc = await jetstream.connect(
            url, name=name, disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect
        )
        self.publisher = jetstream.JetStreamPublisher(
            self.nc, timeout=self.settings.publish_timeout_s
        )
        await self._ensure_streams()

    async def _ensure_streams(self) -> None:
        assert self.nc is not None
        configs = jetstream.stream_configs(self.partitions, self.limits())
        delay = 0.2
        while True:
            try:
                await jetstream.ensure_streams(
                    self.nc.jetstream(timeout=5), configs, self.partitions
                )
            except ConfigError:
                raise  # the streams are not what the settings say: stop (serve())
            except HourglassError as exc:
                logger.warning("streams not ready, retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.streams_ok = True
                self.metrics.bus_connected.set(1)
                logger.info("bus ready", extra={"streams": len(configs)})
                return

    async def _on_disconnect(self) -> None:
        self.metrics.bus_connected.set(0)
        logger.warning("bus disconnected")

    async def _on_reconnect(self) -> None:
        logger.info("bus reconnected")
        self.metrics.bus_connected.set(1)
        # A restarted external server may have lost its streams; check again.
        self._setup = asyncio.create_task(self._ensure_streams())

    async def close(self) -> None:
        """Close, not drain: every publish has been awaited by now (committer, heartbeat).

        Draining a connection whose server is gone raises (while reconnecting)
        or waits out its timeout, and after ``kill -9`` of ``hourglass up`` the
        gateway and nats-server get SIGTERM together: the dying gateway would
        linger for nothing, and a new ``up`` waits for it.
        """
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


LISTEN_FD = "HOURGLASS__LISTEN_FD"
READY_FD = "HOURGLASS__READY_FD"


def report_ready() -> None:
    """Tell the parent that this worker is ready, if it asked (``up``'s ``ReadyReports``)."""
    fd = os.environ.get(READY_FD)
    if fd:
        try:
            os.write(int(fd), b"1")
        except OSError:  # full: the parent has long stopped reading
            pass


def listening_socket(host: str, port: int) -> socket.socket:
    """The gateway's socket: inherited from the parent, or opened here."""
    inherited = os.environ.get(LISTEN_FD)
    if inherited:
        return socket.socket(fileno=int(inherited))
    return _listen(host, port)


def worker_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker, all on ``host:port``, for a parent to hand down.

    Why not one shared socket: every worker then waits on it, and the first to
    wake accepts every connection queued at that moment, so keep-alive
    connections opened together all land on one worker while the others idle.
    With ``SO_REUSEPORT`` each worker listens on its own socket and the kernel
    spreads new connections over them by a hash of the address pair.  The
    parent keeps the sockets open, so a restarted worker gets its socket back
    (connections that arrive meanwhile wait in its queue).  On systems other
    than Linux, where ``SO_REUSEPORT`` does not balance connections, the
    workers share one socket.

    ``SO_REUSEPORT`` also lets any other socket of the same user join the
    port, another Hourglass gateway's included: a plain bind first makes sure
    that nobody is listening there (the gap between that check and the real
    binds is a few system calls wide).
    """
    if workers == 1 or not _can_reuse_port():
        return [_listen(host, port)]
    probe = _bind(host, port, reuse_port=False)
    port = probe.getsockname()[1]  # port 0: the free port just found
    probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            socks.append(_listen(host, port, reuse_port=True))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _can_reuse_port() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket() as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            return False
    return True


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket, not inheritable: a parent hands it down with ``pass_fds``.

    Why not inheritable: uvloop ignores ``close_fds``, so every child (nats-server,
    the loader, the other workers) would hold a copy.  A copy keeps the socket
    listening after its gateway has stopped accepting: connections queue where
    nobody takes them and are reset when the last copy closes, and a restarted
    ``up`` cannot bind the port meanwhile.
    """
    sock = _bind(host, port, reuse_port=reuse_port)
    try:
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


# Young objects (allocations minus deallocations) that trigger a gen-0 collection;
# CPython's default is 700.
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Fewer, cheaper garbage collections while serving; call once start-up is done.

    A 1,000-event request decodes ~2,000 GC-tracked Structs.  With the default
    threshold (700) a collection runs in the middle of nearly every decode, finds
    the half-built batch alive and promotes it, so full collections follow
    often, each walking the whole heap.  Above a request's worth of objects a
    gen-0 collection runs only when live objects really grow (or cycles pile
    up, which it still collects); ``gc.freeze()`` moves what start-up built
    (modules, schemas, the OpenAPI document) out of every later collection's
    way.  Measured: validate + encode of 1,000 events with 0-16 requests in
    flight spent 31-47 % in GC, p99 12-26 ms against a p50 of 1.3-1.8 ms;
    tuned, 3 short collections in 14,000 requests and a p99 of 1.3 ms.  One
    gateway at 300 k events/s: ack p99 27 -> 7.4 ms, CPU 0.55 -> 0.44 cores.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _after_uvicorn(signum: int, frame: object) -> None:
    logger.info("stopping", extra={"signal": signal.Signals(signum).name})


async def serve(settings: Settings) -> None:
    registry = load_registry(settings)
    url = resolve_bus_url(settings)
    keys = ApiKeys.load(Path(settings.api_keys)) if settings.api_keys else None
    gateway_id = "gw-" + secrets.token_hex(4)
    metrics = GatewayMetrics()
    bus = BusLink(settings, registry.type_names, metrics)
    committer = GroupCommitter(
        bus,
        owner=gateway_id,
        max_bytes=min(settings.commit_max_bytes, MAX_PAYLOAD - 4096),
        max_wait=settings.commit_max_wait_ms / 1000,
        observe=metrics.observe_publish,
    )
    stamps = InFlight()
    app = Gateway(
        settings,
        EventTypes(registry),
        committer,
        bus,
        gateway_id=gateway_id,
        metrics=metrics,
        keys=keys,
        stamps=stamps,
    )
    sock = listening_socket(settings.host, settings.port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        http="httptools",
        timeout_keep_alive=30,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        server_header=False,
    )
    server = uvicorn.Server(config)
    heartbeat: Heartbeat | None = None

    async def connect_and_beat() -> None:
        nonlocal heartbeat
        await bus.connect(url, name=gateway_id)
        report_ready()
        assert bus.nc is not None
        heartbeat = Heartbeat(
            bus.nc.jetstream(timeout=5),
            gateway_id,
            [s for t, n in bus.partitions.items() for s in jetstream.subjects(t, n)],
            stamps,
            interval=settings.marker_interval_s,
            ttl_s=settings.lease_ttl_s,
            replicas=bus.limits().replicas,
            metrics=metrics,
        )
        await heartbeat.run()

    connecting = asyncio.create_task(connect_and_beat())
    refused: list[ConfigError] = []

    def stop_if_refused(task: asyncio.Task[None]) -> None:
        """Streams whose partitions differ from the settings: no use serving."""
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, ConfigError):
            logger.error("bus refused", extra={"error": str(exc)})
            refused.append(exc)
            server.should_exit = True

    connecting.add_done_callback(stop_if_refused)
    logger.info(
        "gateway listening",
        extra={
            "gateway": gateway_id,
            "address": f"{settings.host}:{sock.getsockname()[1]}",
            "bus": url,
            "types": len(registry),
        },
    )
    # uvicorn handles SIGINT/SIGTERM itself, then restores the handlers it found
    # and raises the signal again.  Finding these, the re-raise is a no-op and the
    # clean-up below runs: pending publishes, the lease released, the bus drained.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _after_uvicorn)
    tune_gc()
    try:
        await server.serve(sockets=[sock])
    finally:
        connecting.cancel()
        await committer.close()
        if heartbeat is not None and bus.ready:  # without a bus the lease expires on its own
            await heartbeat.retire()
        await bus.close()
        logger.info("gateway stopped", extra={"gateway": gateway_id})
    if refused:
        raise refused[0]
