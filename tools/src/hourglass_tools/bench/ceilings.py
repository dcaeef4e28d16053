"""The two ceilings a run is judged against, measured on the same machine, in the
same run, with the same load generator and batches.

* transport: ``sink.py`` under uvicorn (httptools, uvloop), as the gateway is
  served, answering 200 once it has read the body;
* bus: one Python (nats-py) publisher publishing NDJSON batches of the same
  events to the same streams (one per event type, round robin) on a fresh
  embedded ``nats-server`` with ``sync_interval: always``, with the gateway's
  stream settings and a unique ``Nats-Msg-Id`` per message; as many publishes
  in flight as the load generator has connections.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hourglass_tools.bench import procs
from hourglass_tools.bench.loadgen import Channel, LoadResult, Plan, drive, http_factory
from hourglass_tools.bench.workload import Workload, type_names


@dataclass
class Ceiling:
    name: str
    load: LoadResult
    peak_rss_mib: dict[str, float | None]
    cores: dict[str, float | None]


async def _measured(
    watched: dict[str, int], run: Awaitable[LoadResult]
) -> tuple[LoadResult, dict[str, float | None], dict[str, float | None]]:
    """``run``'s result, then peak RSS (MiB) and cores used of each watched process."""
    cpu0 = {name: procs.cpu_seconds(pid) for name, pid in watched.items()}
    began = time.monotonic()
    load = await run
    seconds = time.monotonic() - began
    rss = {name: procs.peak_rss_mib(pid) for name, pid in watched.items()}
    cores: dict[str, float | None] = {}
    for name, pid in watched.items():
        now, before = procs.cpu_seconds(pid), cpu0[name]
        cores[name] = None if now is None or before is None else round((now - before) / seconds, 2)
    return load, rss, cores


async def transport(root: Path, workload: Workload, plan: Plan) -> Ceiling:
    port = procs.free_port()
    argv = [sys.executable, "-m", "hourglass_tools.bench.sink", str(port)]
    child = procs.Child("transport-sink", [*argv, str(workload.events_per_request)], root / "logs")
    try:
        await asyncio.to_thread(
            procs.wait_for, lambda: procs.port_open(port), 30, "the HTTP sink", child
        )
        parts, _ = workload.templates()
        load, rss, cores = await _measured(
            {"uvicorn": child.pid, "loadgen": os.getpid()},
            drive(http_factory("127.0.0.1", port), workload, plan, parts=parts),
        )
    finally:
        child.stop()
    return Ceiling("transport", load, rss, cores)


class JetStreamChannel:
    """One publish at a time, on a connection shared with the other channels."""

    def __init__(self, js: Any, subjects: list[str], numbers: itertools.count[int]) -> None:
        self._js = js
        self._subjects = subjects
        self._numbers = numbers
        self.events = 0

    async def send(self, body: bytes) -> tuple[int, int]:
        from hourglass.bus.errors import BusError, BusUnavailable, map_nats_errors
        from hourglass.bus.jetstream import KIND, MSG_ID

        n = next(self._numbers)
        try:
            with map_nats_errors("publish"):
                await self._js.publish(
                    self._subjects[n % len(self._subjects)],
                    body,
                    timeout=10.0,
                    headers={MSG_ID: f"bench-{n}", KIND: "batch"},
                )
        except (BusUnavailable, BusError):
            return 503, 0  # counted as an error, like the gateway's 503
        return 200, self.events

    async def close(self) -> None:
        return None


async def bus(root: Path, workload: Workload, plan: Plan, stream_max_bytes: int) -> Ceiling:
    from hourglass.bus import jetstream
    from hourglass.bus.embedded import nats_server_binary, server_config

    folder = root / "bus-ceiling"
    folder.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    conf = folder / "nats.conf"
    conf.write_text(
        server_config(port=port, store_dir=folder / "store", log_file=folder / "nats.log")
    )
    child = procs.Child("bus-ceiling-nats", [nats_server_binary(), "-c", str(conf)], root / "logs")
    nc = None
    try:
        await asyncio.to_thread(
            procs.wait_for, lambda: procs.port_open(port), 30, "nats-server", child
        )
        nc = await jetstream.connect(f"nats://127.0.0.1:{port}", name="bench-bus-ceiling")
        names = type_names(workload.types)
        limits = jetstream.StreamLimits(
            max_bytes=stream_max_bytes,
            max_age_s=7 * 24 * 3600,
            replicas=1,
            duplicate_window_s=120,
            max_msg_size=-1,
        )
        await jetstream.ensure_streams(
            nc.jetstream(timeout=10), jetstream.stream_configs(names, limits)
        )
        js = nc.jetstream(timeout=10)
        subjects = [jetstream.subject(t) for t in names]
        numbers = itertools.count()

        async def make() -> Channel:
            channel = JetStreamChannel(js, subjects, numbers)
            channel.events = workload.events_per_request
            return channel

        _, ndjson = workload.templates()
        load, rss, cores = await _measured(
            {"nats-server": child.pid, "publisher": os.getpid()},
            drive(make, workload, plan, parts=ndjson),
        )
    finally:
        if nc is not None:
            await nc.close()
        child.stop()
        shutil.rmtree(folder / "store", ignore_errors=True)
    return Ceiling("bus", load, rss, cores)
