"""The pipeline under test, as ``hourglass up`` runs it, and a sampler of its state.

nats-server (``sync_interval: always``), ``hourglass gateway`` and ``hourglass
loader`` are separate children of the bench, on free loopback ports, with
their data in the run's temporary folder.  Settings are the defaults except:
the bench's own event types, ``--bucket`` (1m, so buckets close during a run)
and stream sizes that fit the run (a full stream would answer 503).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from hourglass.config import Settings, settings_env
from hourglass_tools.bench import procs
from hourglass_tools.bench.workload import write_schemas


@dataclass
class Pipeline:
    root: Path
    types: list[str]
    workers: int = 1
    bucket: str = "1m"
    stream_max_bytes: int = 1 << 30
    loader: bool = True  # False: ingest only, gateway and bus
    loader_nice: int | None = None  # None: the Settings default
    standby: bool = False  # a second loader, the standby of every stream
    children: dict[str, procs.Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.port = procs.free_port()
        self.bus_port = procs.free_port()
        self.metrics_port = procs.free_port()
        self.standby_port = procs.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.loader_metrics = f"http://127.0.0.1:{self.metrics_port}/metrics"
        # Every loader's metrics endpoint, by child name.
        self.loaders = {"loader": self.loader_metrics}
        if self.standby:
            self.loaders["loader-standby"] = f"http://127.0.0.1:{self.standby_port}/metrics"
        self.settings = Settings(
            data_dir=str(self.root / "data"),
            schemas=str(write_schemas(self.root / "schemas", len(self.types))),
            port=self.port,
            bus=f"nats://127.0.0.1:{self.bus_port}",
            bucket=self.bucket,
            workers=self.workers,
            stream_replicas=1,
            stream_max_bytes=self.stream_max_bytes,
            loader_metrics_port=self.metrics_port,
            log_level="warning",
        )
        if self.loader_nice is not None:
            self.settings = msgspec.structs.replace(self.settings, loader_nice=self.loader_nice)
        if self.standby:  # active-passive: the second loader owns nothing until a takeover
            self.settings = msgspec.structs.replace(self.settings, loader_balance=False)
        self.settings.validate()

    @property
    def lake(self) -> Path:
        return self.root / "data" / "lake"

    def start(self) -> None:
        from hourglass.bus.embedded import nats_server_binary, server_config

        logs = self.root / "logs"
        bus_dir = self.root / "bus"
        bus_dir.mkdir(parents=True, exist_ok=True)
        conf = bus_dir / "nats.conf"
        conf.write_text(
            server_config(port=self.bus_port, store_dir=bus_dir / "store", log_file=bus_dir / "log")
        )
        env = settings_env(self.settings)
        # The loaders log at info: a few lines a minute per type (closes,
        # compactions, a takeover's recovery timings), which a run's notes need.
        loader_env = settings_env(msgspec.structs.replace(self.settings, log_level="info"))
        bus = procs.Child("nats-server", [nats_server_binary(), "-c", str(conf)], logs)
        self.children["nats-server"] = bus
        procs.wait_for(lambda: procs.port_open(self.bus_port), 30, "nats-server", bus)
        gateway = procs.Child("gateway", procs.hourglass_argv("gateway"), logs, env)
        self.children["gateway"] = gateway
        procs.wait_for(self._ready, 60, "the gateway ready", gateway)
        if not self.loader:
            return
        loader = procs.Child("loader", procs.hourglass_argv("loader"), logs, loader_env)
        self.children["loader"] = loader
        procs.wait_for(lambda: procs.port_open(self.metrics_port), 60, "the loader", loader)
        if self.standby:
            other = msgspec.structs.replace(
                self.settings, loader_metrics_port=self.standby_port, log_level="info"
            )
            argv = procs.hourglass_argv("loader")
            standby = procs.Child("loader-standby", argv, logs, settings_env(other))
            self.children["loader-standby"] = standby
            procs.wait_for(lambda: procs.port_open(self.standby_port), 60, "the standby", standby)
        time.sleep(1.0)  # consumers created

    def _ready(self) -> bool:
        try:
            return httpx.get(self.base + "/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def pids(self) -> dict[str, int]:
        """Every process of the pipeline (gateway workers under their parent)."""
        out = {name: child.pid for name, child in self.children.items() if child.alive()}
        gateway = self.children.get("gateway")
        if gateway is not None and self.workers > 1:
            for i, pid in enumerate(_descendants(gateway.pid)):
                out[f"gateway-{i}"] = pid
        return out

    def stop(self) -> None:
        for name in ("gateway", "loader", "loader-standby", "nats-server"):
            child = self.children.get(name)
            if child is not None:
                child.stop()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(x) for x in task.read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found.append(kid)
            found += _descendants(kid)
    return found


def _bench_streams(values: dict[str, float]) -> float:
    return sum(v for labels, v in values.items() if "bench." in labels)


DISK_EVERY_S = 30.0


class Sampler:
    """Once a second: gateway and loader metrics, RSS and CPU of each process.

    The loader's lag in events is what the bench saw acknowledged (``add``,
    from ``acked_before`` on; resends included) minus what the loader wrote or
    dropped as duplicates: right with any number of gateway workers, where a
    scrape of the gateway's metrics reaches only one of them.
    """

    def __init__(self, pipeline: Pipeline, acked_before: int = 0) -> None:
        self.pipeline = pipeline
        self.acked = acked_before
        self.samples: list[dict[str, Any]] = []
        self._disk: tuple[float, float, float] = (-1e9, 0.0, 0.0)  # when, lake, state
        # Each loader's last scrape: a killed loader's counters still count.
        self._last: dict[str, str] = {}

    async def _loaders(self, client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
        """The owner's metrics now (or the first loader's), and every loader's last."""
        owner = ""
        for name, url in self.pipeline.loaders.items():
            child = self.pipeline.children.get(name)
            if child is not None and not child.alive():
                continue
            self._last[name] = (await client.get(url)).text
            if _bench_streams(procs.prometheus_values(self._last[name], "hourglass_loader_owned")):
                owner = self._last[name]
        return owner or self._last.get("loader", ""), dict(self._last)

    def add(self, events: int) -> None:
        self.acked += events

    async def sample(self, client: httpx.AsyncClient) -> dict[str, Any]:
        p = self.pipeline
        row: dict[str, Any] = {"t": time.time()}
        try:
            gateway = (await client.get(p.base + "/metrics")).text
            loader, every = await self._loaders(client) if p.loader else ("", {})
        except httpx.HTTPError:
            return row
        accepted = _bench_streams(
            procs.prometheus_values(gateway, "hourglass_events_accepted_total")
        )
        row.update(
            gateway_accepted=accepted,
            publish_s=procs.prometheus_sum(gateway, "hourglass_publish_seconds_sum"),
            bus_messages=procs.prometheus_sum(gateway, "hourglass_bus_message_events_count"),
            bus_events=procs.prometheus_sum(gateway, "hourglass_bus_message_events_sum"),
            rss_mib={n: procs.rss_mib(pid) for n, pid in p.pids().items()},
            cpu_s={n: procs.cpu_seconds(pid) for n, pid in p.pids().items()},
        )
        if not p.loader:
            return row
        by_loader = {
            name: _bench_streams(
                procs.prometheus_values(text, "hourglass_loader_rows_written_total")
            )
            for name, text in every.items()
        }
        rows = sum(by_loader.values())
        dups = sum(
            _bench_streams(
                procs.prometheus_values(text, "hourglass_loader_duplicates_dropped_total")
            )
            for text in every.values()
        )
        row.update(
            acked=self.acked,
            stream_bytes=_bench_streams(procs.prometheus_values(loader, "hourglass_stream_bytes")),
            # Where the owner's memory goes: the dedup index, rows not yet flushed,
            # and all of Arrow's pool (those rows included).
            dedup_memory=_bench_streams(
                procs.prometheus_values(loader, "hourglass_loader_dedup_memory_bytes")
            ),
            pending_bytes=_bench_streams(
                procs.prometheus_values(loader, "hourglass_loader_pending_bytes")
            ),
            arrow_bytes=procs.prometheus_sum(loader, "hourglass_loader_arrow_bytes"),
            **self._disk_usage(),
            loader_rows=rows,
            loader_rows_by=by_loader,
            loader_duplicates=dups,
            lag_events=max(self.acked - rows - dups, 0.0),
            lag_messages=_bench_streams(
                procs.prometheus_values(loader, "hourglass_loader_lag_messages")
            ),
            buckets_closed=sum(
                _bench_streams(procs.prometheus_values(t, "hourglass_loader_buckets_closed_total"))
                for t in every.values()
            ),
            buckets_compacted=sum(
                _bench_streams(
                    procs.prometheus_values(t, "hourglass_loader_buckets_compacted_total")
                )
                for t in every.values()
            ),
            compaction_backlog=sum(
                _bench_streams(
                    procs.prometheus_values(t, "hourglass_loader_compaction_backlog_buckets")
                )
                for t in every.values()
            ),
        )
        return row

    def _disk_usage(self) -> dict[str, float]:
        """Bytes of the lake and of the loader's state, measured every 30 s."""
        when, lake, state = self._disk
        if time.monotonic() - when >= DISK_EVERY_S:
            data = self.pipeline.settings.data_path
            lake, state = procs.du(data / "lake"), procs.du(data / "loader")
            self._disk = (time.monotonic(), lake, state)
        return {"lake_bytes": lake, "state_bytes": state}

    async def run(self, interval: float = 1.0) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            next_at = time.monotonic()
            while True:
                self.samples.append(await self.sample(client))
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if start <= s["t"] <= end and "loader_rows" in s]


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, value)`` points (0 with fewer than 3)."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


def lag_trend(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares slope of the loader lag (events/s) over ``samples``, its
    maximum and last value: a flat lag has a slope near 0."""
    points = [(s["t"], float(s["lag_events"])) for s in samples if "lag_events" in s]
    if len(points) < 3:
        return {"slope_eps": 0.0, "max": max((v for _, v in points), default=0.0), "last": 0.0}
    return {"slope_eps": slope(points), "max": max(v for _, v in points), "last": points[-1][1]}


def rss_trend(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per process: RSS at the first and last sample of the window (MiB) and its
    least-squares slope in MiB per minute; flat memory has a slope near 0."""
    series: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for name, mib in (s.get("rss_mib") or {}).items():
            if mib is not None:
                series.setdefault(name, []).append((s["t"], float(mib)))
    return {
        name: {
            "first_mib": points[0][1],
            "last_mib": points[-1][1],
            "slope_mib_per_min": slope(points) * 60.0,
        }
        for name, points in series.items()
    }


def kill_owner(pipeline: Pipeline) -> str:
    """kill -9 the loader that owns the bench's streams now; its name."""
    for name, url in pipeline.loaders.items():
        child = pipeline.children.get(name)
        if child is None or not child.alive():
            continue
        text = httpx.get(url, timeout=2.0).text
        if _bench_streams(procs.prometheus_values(text, "hourglass_loader_owned")):
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait(10)
            return name
    raise RuntimeError("no loader owns the bench's streams")


def takeover_s(samples: list[dict[str, Any]], killed: str, at: float) -> float | None:
    """Seconds from the kill to the first sample in which another loader had
    written more rows than at the kill: its first commit as the new owner."""
    before: dict[str, float] = {}
    for s in samples:
        by = s.get("loader_rows_by") or {}
        if s["t"] <= at:
            before = {n: v for n, v in by.items() if n != killed}
            continue
        if any(v > before.get(n, 0.0) for n, v in by.items() if n != killed):
            return float(s["t"] - at)
    return None
