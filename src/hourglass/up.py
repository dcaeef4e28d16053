"""``hourglass up``: the whole pipeline on one machine, in one command.

The supervisor (this process) owns the embedded bus and starts every other
component as a child process, restarting any that dies: a crash of one part is
a restart, not an outage.  Children inherit the resolved settings, so they agree
on ports, folders and limits.

``kill -9`` of the supervisor: the kernel sends every child SIGTERM (see
:mod:`hourglass.process`) and each stops cleanly on its own; nothing
acknowledged is lost, as the bus fsyncs before any acknowledgement.  A new
``up`` on the same folder first waits (bounded, logged) for the last of them
to exit, holding off even the port: only then can no answer come from a
process of the old run, and the port, the bus store and the lake are free.
Each gateway holds only its own listening socket, so a dying gateway's
socket closes with it, not later with another process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence

import httpx
import msgspec

from hourglass import log
from hourglass.bus.embedded import EmbeddedBus, free_port
from hourglass.config import Settings, settings_env
from hourglass.exceptions import ConfigError
from hourglass.gateway.server import LISTEN_FD, READY_FD, worker_sockets
from hourglass.lake.layout import check_layout
from hourglass.lake.store import lake_store
from hourglass.process import RunLock, Supervised

logger = log.get("hourglass.up")

# How long a new run waits for the children of a killed one: a gateway may be
# finishing requests in flight (each within the publish timeout, 5 s), the
# loader its flush.
PREVIOUS_RUN_TIMEOUT = 30.0


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; install it before starting anything."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_signalled() -> None:
    await _stop_event().wait()


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[None]) -> bool:
    """Run ``work`` unless a stop signal comes first; True if it completed."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        if pending not in done:
            pending.cancel()
    if task in done:
        task.result()
        return True
    return False


def loader_child(settings: Settings, *, inherit: Sequence[int] = ()) -> Supervised:
    return Supervised(
        "loader",
        [sys.executable, "-m", "hourglass", "loader"],
        env=settings_env(settings),
        pass_fds=inherit,
    )


class ReadyReports:
    """A pipe per gateway worker, on which the worker reports that it is ready.

    Why not ``/readyz`` alone: the kernel picks the worker of every connection,
    so a 200 says that *some* worker is ready, and a request to another one
    would still be told to retry.  The write ends stay open here, so that a
    restarted worker gets its own again; they are non-blocking, so a worker
    never waits on a parent that has stopped reading.
    """

    def __init__(self, workers: int) -> None:
        self.pipes = [os.pipe() for _ in range(workers)]
        for pipe in self.pipes:
            for fd in pipe:
                os.set_blocking(fd, False)
        self._waiting = {read for read, _ in self.pipes}

    def all_ready(self) -> bool:
        for fd in list(self._waiting):
            try:
                if os.read(fd, 64):
                    self._waiting.discard(fd)
            except BlockingIOError:
                pass
        return not self._waiting

    def close(self) -> None:
        for pipe in self.pipes:
            for fd in pipe:
                os.close(fd)


def dashboard_child(settings: Settings, *, inherit: Sequence[int] = ()) -> Supervised:
    return Supervised(
        "dashboard",
        [sys.executable, "-m", "hourglass", "dashboard"],
        env=settings_env(settings),
        pass_fds=inherit,
    )


def gateway_children(
    settings: Settings,
    socks: list[socket.socket],
    *,
    inherit: Sequence[int] = (),
    ready: ReadyReports | None = None,
) -> list[Supervised]:
    """``settings.workers`` gateway processes; worker ``i`` listens on ``socks[i]``.

    With one socket for all (no ``SO_REUSEPORT``), every worker shares it.  A
    restarted worker gets the same socket again: this process keeps them open.
    ``inherit``: more descriptors for every worker to hold (the run lock).
    """
    one = msgspec.structs.replace(settings, workers=1)
    children = []
    for i in range(settings.workers):
        fd = socks[i % len(socks)].fileno()
        env = {**settings_env(one), LISTEN_FD: str(fd)}
        fds = [fd, *inherit]
        if ready is not None:
            env[READY_FD] = str(ready.pipes[i][1])
            fds.append(ready.pipes[i][1])
        children.append(
            Supervised(
                f"gateway-{i}" if settings.workers > 1 else "gateway",
                [sys.executable, "-m", "hourglass", "gateway"],
                env=env,
                pass_fds=fds,
            )
        )
    return children


async def wait_ready(
    base_url: str, timeout: float, *, verify: bool = True, workers: ReadyReports | None = None
) -> None:
    """Until ``/readyz`` is 200 and, given ``workers``, every worker has said it is ready."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(verify=verify) as client:
        while True:
            try:
                if workers is None or workers.all_ready():
                    response = await client.get(base_url + "/readyz", timeout=1.0)
                    if response.status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigError(f"the gateway at {base_url} did not become ready in {timeout}s")
            await asyncio.sleep(0.1)


def _port_or_free(host: str, port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return free_port()
    return port


async def run_gateways(settings: Settings) -> None:
    socks = worker_sockets(settings.host, settings.port, settings.workers)
    children = gateway_children(settings, socks)
    for child in children:
        child.start()
    try:
        await _until_signalled()
    finally:
        await asyncio.gather(*(c.stop() for c in children))
        for sock in socks:
            sock.close()


async def run_bus(settings: Settings) -> None:
    bus = EmbeddedBus(
        settings.data_path,
        port=settings.bus_port,
        log_max_bytes=settings.bus_log_max_bytes,
        log_files=settings.bus_log_files,
    )
    await bus.start()
    print(f"bus: {bus.url} (store {bus.root})", flush=True)
    try:
        await _until_signalled()
    finally:
        await bus.stop()


async def up(settings: Settings, *, demo: bool = False, demo_rate: float = 20.0) -> None:
    stop = _stop_event()  # first: a signal during start-up still stops everything in order
    run = RunLock(settings.data_path)  # before the port: a killed run's gateway may be on it
    try:
        if await _unless_stopped(stop, run.acquire(PREVIOUS_RUN_TIMEOUT)):
            await _up(settings, stop, run.fd, demo=demo, demo_rate=demo_rate)
    finally:
        run.release()


async def _up(
    settings: Settings, stop: asyncio.Event, run_fd: int, *, demo: bool, demo_rate: float
) -> None:
    """Everything after the run lock; every child holds ``run_fd`` while it lives."""
    # A busy port fails before anything runs.
    socks = worker_sockets(settings.host, settings.port, settings.workers)
    check_layout(settings, lake_store(settings))  # so does a lake of another bucket width
    ready = ReadyReports(settings.workers)
    bus: EmbeddedBus | None = None
    children: list[Supervised] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        if settings.bus:
            replicas = settings.stream_replicas or 3
        else:
            bus = EmbeddedBus(
                settings.data_path,
                port=settings.bus_port,
                pass_fds=[run_fd],
                log_max_bytes=settings.bus_log_max_bytes,
                log_files=settings.bus_log_files,
            )
            if not await _unless_stopped(stop, bus.start()):
                return
            replicas = settings.stream_replicas or 1
        url = settings.bus or (bus.url if bus else "")
        metrics_port = settings.loader_metrics_port or free_port()
        # The dashboard is a convenience, not a part of the pipeline: its port
        # taken (another run's dashboard) is not worth refusing to start.
        dashboard_port = _port_or_free(settings.host, settings.dashboard_port)
        child_settings = msgspec.structs.replace(
            settings,
            bus=url,
            stream_replicas=replicas,
            loader_metrics_port=metrics_port,
            dashboard_port=dashboard_port,
        )
        children = [
            *gateway_children(child_settings, socks, inherit=[run_fd], ready=ready),
            loader_child(child_settings, inherit=[run_fd]),
            dashboard_child(child_settings, inherit=[run_fd]),
        ]
        for child in children:
            child.start()
        scheme = "https" if settings.tls_cert else "http"
        base = f"{scheme}://{settings.host}:{settings.port}"
        if not await _unless_stopped(stop, wait_ready(base, 60.0, verify=False, workers=ready)):
            return
        protocols = ""
        if settings.segment:
            protocols += f"  Segment:      host {base}  (Segment's and RudderStack's SDKs)\n"
        if settings.snowplow:
            protocols += f"  Snowplow:     collector {base}  (tp2 and /i)\n"
        print(
            f"\nHourglass is up.\n"
            f"  send events:  POST {base}/v1/events  (CloudEvents, see README)\n"
            f"{protocols}"
            f"  health:       {base}/readyz   metrics: {base}/metrics\n"
            f"  dashboard:    http://{settings.host}:{dashboard_port}/  "
            f"(SLO metrics: /metrics)\n"
            f"  loader:       metrics http://{settings.host}:{metrics_port}/metrics\n"
            f"  bus:          {url}  ({'embedded, ' + str(bus.root) if bus else 'external'})\n"
            f"  lake:         {settings.lake_url}  (buckets of {settings.bucket})\n"
            f"  stop:         Ctrl-C\n",
            flush=True,
        )
        if demo:
            from hourglass.demo import run_demo

            tasks.append(asyncio.create_task(run_demo(base, settings, rate=demo_rate)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in children))
        if bus is not None:
            await bus.stop()
        for sock in socks:
            sock.close()
        ready.close()
        print("Hourglass stopped.", flush=True)
