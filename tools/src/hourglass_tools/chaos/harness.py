"""A chaos run: the whole pipeline as separate processes, killed and paused on a
seeded schedule, then checked end to end.

Phases, in order:

1. start nats-server (own store, ``sync_interval: always``), one gateway on a
   fixed port, the loader, and the producers (``producers.py``), each a child
   process of this one (``components.py``);
2. faults (``schedule.py``) for ``duration_s`` — and until ``min_faults`` were
   injected — while watching for processes that exit on their own (restarted,
   and reported);
3. recovery: SIGCONT whatever is paused, start whatever is down, wait for the
   gateway to be ready;
4. producers stop cleanly (SDK ones flush their spool; one that cannot is
   flushed by a producer in this process on the same spool folder);
5. wait, bounded, until every bucket up to the one holding the last event is
   closed, then stop gateway, loader and bus (clean stops: a loader that stops
   flushes what it processed);
6. verify the lake (``verify.py``) and report (``report.py``).

Every child is stopped on every path out (``finally``), paused ones resumed
first; children also die with this process (PDEATHSIG).
"""

from __future__ import annotations

import datetime as dt
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import httpx

from hourglass.bus.embedded import free_port, nats_server_binary, server_config
from hourglass.config import MiB, Settings, bucket_seconds, settings_env
from hourglass.exceptions import ConfigError
from hourglass.lake.failed import FAILED_DIR
from hourglass.lake.layout import SUCCESS, bucket_dir, bucket_dirs, bucket_of_dir
from hourglass_tools.chaos import producers as prod
from hourglass_tools.chaos.components import Component
from hourglass_tools.chaos.report import ChaosReport
from hourglass_tools.chaos.schedule import Fault, Timeline, plan
from hourglass_tools.chaos.verify import Verdict, check_buckets, compare, read_lake, temp_files


@dataclass
class ChaosConfig:
    directory: Path
    duration_s: float = 60.0
    seed: int = 7
    min_faults: int = 0
    sdk_producers: int = 2
    http_producers: int = 2
    rate: float = 100.0  # events per second, per producer
    loaders: int = 1  # more than one: the owner of each stream and its standbys
    lease_ttl_s: float = 3.0
    bucket: str = "1m"
    close_timeout_s: float = 90.0  # after the end of the last event's bucket
    out: TextIO | None = None  # progress lines, e.g. sys.stdout


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ConfigError(f"chaos: {what} not within {timeout:.0f} s")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _running(loader: Component) -> bool:
    return "loader running" in loader.log_tail(20_000)


class Run:
    """One chaos run's processes, schedule and timeline."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        root = config.directory.resolve()
        if root.exists() and any(root.iterdir()):
            raise ConfigError(f"chaos: {root} is not empty; give a new --dir")
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.root = root
        self.width = bucket_seconds(config.bucket)
        self.timeline = Timeline(root / "timeline.log")
        bus_port, self.port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        bus_dir = root / "bus"
        bus_dir.mkdir()
        conf = bus_dir / "nats.conf"
        conf.write_text(server_config(port=bus_port, store_dir=bus_dir / "store"))
        self.bus_port = bus_port
        self.settings = Settings(
            data_dir=str(root / "data"),
            port=self.port,
            bus=f"nats://127.0.0.1:{bus_port}",
            bucket=config.bucket,
            lease_ttl_s=config.lease_ttl_s,
            loader_lease_ttl_s=config.lease_ttl_s,
            marker_interval_s=0.5,
            flush_interval_s=1.0,
            stream_replicas=1,
            stream_max_bytes=256 * MiB,
            publish_timeout_s=2.0,
        ).validate()
        env = settings_env(self.settings)
        logs = root / "logs"
        hourglass = [sys.executable, "-m", "hourglass"]
        self.bus = Component(
            "nats-server", lambda: [nats_server_binary(), "-c", str(conf)], log_dir=logs
        )
        self.gateway = Component("gateway", lambda: [*hourglass, "gateway"], log_dir=logs, env=env)
        self.loaders = [
            Component(name, lambda: [*hourglass, "loader"], log_dir=logs, env=env)
            for name in ["loader"] + [f"loader-{i}" for i in range(1, config.loaders)]
        ]
        self.producers: dict[str, tuple[str, Path, Component]] = {}
        kinds = ["sdk"] * config.sdk_producers + ["http"] * config.http_producers
        counts: Counter[str] = Counter()
        for kind in kinds:
            name = f"{kind}-{counts[kind]}"
            counts[kind] += 1
            folder = root / "producers" / name
            folder.mkdir(parents=True)
            self.producers[name] = (kind, folder, self._producer(kind, name, folder))
        self.components = {c.name: c for c in (self.bus, self.gateway, *self.loaders)}
        self.components.update({c.name: c for _, _, c in self.producers.values()})
        self.report = ChaosReport(config.seed, config.duration_s, str(root), dict(counts))
        self.pending: list[tuple[float, str, Component, int]] = []  # (due, action, what, gen)

    def _producer(self, kind: str, name: str, folder: Path) -> Component:
        def argv() -> list[str]:
            first = str(prod.next_first(folder))
            module = "hourglass_tools.chaos.producers"
            rate = str(self.config.rate)
            return [sys.executable, "-m", module, kind, name, self.base, str(folder), first, rate]

        return Component(name, argv, log_dir=self.root / "logs")

    def say(self, what: str, target: str, detail: str = "") -> None:
        entry = self.timeline.add(what, target, detail)
        if self.config.out is not None:
            print(entry.line(), file=self.config.out, flush=True)

    # ------------------------------------------------------------- phases

    def start(self) -> None:
        self.bus.start()
        _wait(lambda: _port_open(self.bus_port), 20, "nats-server listening")
        self.gateway.start()
        _wait(lambda: _ready(self.base), 60, "the gateway ready")
        for loader in self.loaders:
            loader.start()
            _wait(partial(_running, loader), 60, f"{loader.name} running")
        for _, _, component in self.producers.values():
            component.start()
        self.say("started", "all", f"gateway {self.base}, bus {self.settings.bus}")

    def inject(self, fault: Fault) -> None:
        target = self.components[fault.target]
        if fault.action == "kill":
            pid = target.pid
            target.kill()
            target.expected_down = True
            self.pending.append(
                (time.monotonic() + fault.length_s, "restart", target, target.generation)
            )
            self.say(fault.kind, target.name, f"pid {pid}, down {fault.length_s:.2f} s")
        else:
            if not target.alive():
                self.say("skipped", target.name, f"{fault.kind}: not running")
                return
            target.pause()
            self.pending.append(
                (time.monotonic() + fault.length_s, "resume", target, target.generation)
            )
            self.say(fault.kind, target.name, f"pid {target.pid}, for {fault.length_s:.2f} s")
        self.report.faults[fault.kind] += 1

    def tend(self) -> None:
        """Run due restarts and resumes; restart anything that exited by itself."""
        now = time.monotonic()
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, action, component, generation in sorted(due, key=lambda p: p[0]):
            if generation != component.generation:
                continue  # the process it was meant for is gone
            if action == "restart":
                component.start()
                self.say("restart", component.name, f"pid {component.pid}")
            elif component.paused and not any(
                p[1] == "resume" and p[2] is component for p in self.pending
            ):
                component.resume()
                self.say("resume", component.name, f"pid {component.pid}")
        for component in self.components.values():
            code = component.exit_code()
            if component.expected_down or component.proc is None or code is None:
                continue
            at = time.time() - self.timeline.started
            self.report.unexpected_exits.append(
                f"{component.name} exited with {code} at +{at:.1f} s (log: {component.log_path})"
            )
            self.say("exited", component.name, f"code {code}; restarting")
            component.start()

    def chaos(self) -> None:
        faults = plan(
            self.config.seed,
            sorted(self.producers),
            self.config.lease_ttl_s,
            tuple(c.name for c in self.loaders),
        )
        started = time.monotonic()
        fault = next(faults)
        while True:
            self.tend()
            elapsed = time.monotonic() - started
            enough = self.report.faults_injected >= self.config.min_faults
            if elapsed >= self.config.duration_s and enough:
                break
            if elapsed >= fault.at_s:
                self.inject(fault)
                fault = next(faults)
            time.sleep(0.05)
        self.say("faults stop", "all", f"{self.report.faults_injected} injected")

    def recover(self) -> None:
        for _, action, component, generation in self.pending:
            if generation == component.generation and action == "restart":
                component.start()
                self.say("restart", component.name, f"pid {component.pid}")
        self.pending.clear()
        for component in self.components.values():
            if component.paused:
                component.resume()
                self.say("resume", component.name, f"pid {component.pid}")
        self.tend()
        _wait(lambda: _ready(self.base), 60, "the gateway ready after the faults")

    def stop_producers(self) -> None:
        for _, _, component in self.producers.values():
            component.resume()
            if component.alive():
                assert component.proc is not None
                component.proc.terminate()
        for name, (kind, folder, component) in self.producers.items():
            component.expected_down = True
            code = component.stop(timeout=90)
            self.say("stopped", name, f"exit {code}")
            if kind == "sdk" and code != 0:
                self._flush_spool(name, folder)
            rejected = folder / prod.REJECTED_LOG
            if rejected.exists() and rejected.stat().st_size:
                lines = rejected.read_text().splitlines()
                self.report.problems.append(f"{name}: {len(lines)} events refused, e.g. {lines[0]}")

    def _flush_spool(self, name: str, folder: Path) -> None:
        """The producer did not flush by itself: a new one on its spool does."""
        from hourglass.producer import Producer

        producer = Producer(self.base, spool_dir=folder / "spool", source=prod.source_of(name))
        try:
            flushed = producer.flush(timeout=60)
        finally:
            producer.close(timeout=1)
        self.say("flushed here", name, "ok" if flushed else "FAILED")
        if not flushed:
            self.report.problems.append(f"{name}: its spool did not drain within 60 s")

    def wait_closed(self, last_event: float) -> None:
        """Until every bucket up to ``last_event``'s of each producer type is closed."""
        lake = self.settings.lake_path
        last = int(last_event) - int(last_event) % self.width
        deadline = (
            time.monotonic() + (last + self.width - time.time()) + self.config.close_timeout_s
        )

        def open_buckets() -> list[str]:
            found = []
            for type_name in prod.TYPES:
                wanted = {
                    f
                    for f in bucket_dirs(lake, type_name)
                    if bucket_of_dir(lake, type_name, f).timestamp() <= last
                }
                final = dt.datetime.fromtimestamp(last, dt.UTC)
                wanted.add(bucket_dir(lake, type_name, final, self.width))
                found += [
                    str(f.relative_to(lake)) for f in sorted(wanted) if not (f / SUCCESS).exists()
                ]
            return found

        while (left := open_buckets()) and time.monotonic() < deadline:
            self.tend()
            time.sleep(0.5)
        if left:
            self.report.problems.append(
                f"buckets still open {self.config.close_timeout_s:.0f} s after their end: {left}"
            )
        self.say(
            "closed" if not left else "close timeout",
            "lake",
            f"up to {time.strftime('%H:%M', time.gmtime(last))}",
        )

    def stop_all(self) -> None:
        """Clean stops in dependency order; kill whatever does not stop."""
        order = [c for _, _, c in self.producers.values()] + [self.gateway, *self.loaders]
        for component in order:
            component.expected_down = True
            component.stop(timeout=20)
        if len(self.loaders) > 1:
            self._last_recovery()
        self.bus.expected_down = True
        self.bus.stop(timeout=20)

    def _last_recovery(self) -> None:
        """One more start of a loader, alone: its recovery deletes what owners that
        were fenced while paused had staged (invisible to readers, but a temp file)."""
        loader = self.loaders[0]
        loader.start()
        streams = [*prod.TYPES, FAILED_DIR]
        try:
            _wait(
                lambda: all(f"recovered stream={t}" in loader.log_tail(20_000) for t in streams),
                60,
                "the last recovery",
            )
        finally:
            loader.expected_down = True
            loader.stop(timeout=20)
        self.say("last recovery", loader.name, "staged files of fenced owners swept")

    def verify(self) -> Verdict:
        verdict = self.report.verdict
        promised: dict[tuple[str, str], float] = {}
        allowed: dict[str, int] = {}
        for name, (kind, folder, _) in self.producers.items():
            acked = prod.read_acked(folder)
            self.report.acknowledged_by_kind[kind] += len(acked)
            for n, at in acked:
                promised.setdefault((prod.source_of(name), prod.event_id(name, n)), at)
            allowed[prod.source_of(name)] = max((n for n, _ in acked), default=-1) + prod.GROUP
        lake = self.settings.lake_path
        compare(promised, read_lake(lake), allowed, verdict)
        check_buckets(lake, self.width, verdict)
        verdict.temp_files = temp_files([self.settings.data_path])
        return verdict


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run, verify, and return the report (also written to ``<dir>/report.txt``)."""
    began = time.monotonic()
    run = Run(config)
    try:
        run.start()
        run.chaos()
        run.recover()
        run.stop_producers()
        run.wait_closed(time.time())
    except ConfigError as exc:
        run.report.problems.append(str(exc))
    finally:
        run.stop_all()
    run.verify()
    run.report.timeline = list(run.timeline.entries)
    run.report.elapsed_s = time.monotonic() - began
    (run.root / "report.txt").write_text(run.report.render() + "\n")
    return run.report
