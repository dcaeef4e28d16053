"""``hourglass up``: the whole pipeline on one machine, in one command.

The supervisor (this process) owns the embedded bus and starts every other
component as a child process, restarting any that dies: a crash of one part is
a restart, not an outage.  Children inherit the resolved settings, so they agree
on ports, folders and limits.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable

import httpx
import msgspec

from hourglass import log
from hourglass.bus.embedded import EmbeddedBus, free_port
from hourglass.config import Settings, settings_env
from hourglass.exceptions import ConfigError
from hourglass.gateway.server import LISTEN_FD, worker_sockets
from hourglass.loader.service import check_layout
from hourglass.process import Supervised

logger = log.get("hourglass.up")


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


def loader_child(settings: Settings) -> Supervised:
    return Supervised(
        "loader", [sys.executable, "-m", "hourglass", "loader"], env=settings_env(settings)
    )


def gateway_children(settings: Settings, socks: list[socket.socket]) -> list[Supervised]:
    """``settings.workers`` gateway processes; worker ``i`` listens on ``socks[i]``.

    With one socket for all (no ``SO_REUSEPORT``), every worker shares it.  A
    restarted worker gets the same socket again: this process keeps them open.
    """
    one = msgspec.structs.replace(settings, workers=1)
    children = []
    for i in range(settings.workers):
        fd = socks[i % len(socks)].fileno()
        children.append(
            Supervised(
                f"gateway-{i}" if settings.workers > 1 else "gateway",
                [sys.executable, "-m", "hourglass", "gateway"],
                env={**settings_env(one), LISTEN_FD: str(fd)},
                pass_fds=[fd],
            )
        )
    return children


async def wait_ready(base_url: str, timeout: float, *, verify: bool = True) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(verify=verify) as client:
        while True:
            try:
                response = await client.get(base_url + "/readyz", timeout=1.0)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigError(f"the gateway at {base_url} did not become ready in {timeout}s")
            await asyncio.sleep(0.1)


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
    bus = EmbeddedBus(settings.data_path, port=settings.bus_port)
    await bus.start()
    print(f"bus: {bus.url} (store {bus.root})", flush=True)
    try:
        await _until_signalled()
    finally:
        await bus.stop()


async def up(settings: Settings, *, demo: bool = False, demo_rate: float = 20.0) -> None:
    stop = _stop_event()  # first: a signal during start-up still stops everything in order
    # A busy port fails before anything runs.
    socks = worker_sockets(settings.host, settings.port, settings.workers)
    check_layout(settings)  # so does a lake written with another bucket width
    bus: EmbeddedBus | None = None
    children: list[Supervised] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        if settings.bus:
            replicas = settings.stream_replicas or 3
        else:
            bus = EmbeddedBus(settings.data_path, port=settings.bus_port)
            if not await _unless_stopped(stop, bus.start()):
                return
            replicas = settings.stream_replicas or 1
        url = settings.bus or (bus.url if bus else "")
        metrics_port = settings.loader_metrics_port or free_port()
        child_settings = msgspec.structs.replace(
            settings, bus=url, stream_replicas=replicas, loader_metrics_port=metrics_port
        )
        children = [*gateway_children(child_settings, socks), loader_child(child_settings)]
        for child in children:
            child.start()
        scheme = "https" if settings.tls_cert else "http"
        base = f"{scheme}://{settings.host}:{settings.port}"
        if not await _unless_stopped(stop, wait_ready(base, 60.0, verify=False)):
            return
        print(
            f"\nHourglass is up.\n"
            f"  send events:  POST {base}/v1/events  (CloudEvents, see README)\n"
            f"  health:       {base}/readyz   metrics: {base}/metrics\n"
            f"  loader:       metrics http://{settings.host}:{metrics_port}/metrics\n"
            f"  bus:          {url}  ({'embedded, ' + str(bus.root) if bus else 'external'})\n"
            f"  lake:         {settings.data_path / 'lake'}  (buckets of {settings.bucket})\n"
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
        print("Hourglass stopped.", flush=True)
