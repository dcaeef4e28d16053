"""Loader throughput with 1, 2, … loader processes: a backlog drained from partitions.

    python bench/loader_group.py --events 4000000 --partitions 2 --loaders 1 2

For each count of loaders, a fresh nats-server and lake.  First a backlog is
published straight to the P partition streams of one type (bus-shaped NDJSON
messages of 1,000 events, foreign ids: dedup by key, all in the current hour so
no bucket closes); then K ``hourglass loader`` processes start and share the
partitions (the loader group, ``loader/owner.py``).  The drain time is from
their start until every partition's checkpoint has committed its stream's last
message.  No gateway runs: the CPU is the loaders' and nats-server's, read from
``/proc`` for the drain.  On this 2-core machine K = 2 is the most that can
gain; beyond it the figure is what one loader costs per event, for scaling on
paper (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

from hourglass.bus import jetstream
from hourglass.bus.embedded import nats_server_binary, server_config
from hourglass.config import Settings, settings_env
from hourglass.loader.owner import read_checkpoint
from hourglass_tools.bench.workload import write_schemas

TYPE = "bench.E0"
PER_MESSAGE = 1000
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def lines(partitions: int, events: int, received: str) -> dict[int, list[bytes]]:
    """Each partition's messages: event ``i`` of source ``/bench/p<i % 8>``."""
    out: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    pending: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    pad = "x" * 60
    for i in range(events):
        event_id, source = "%012d" % i, "/bench/p%d" % (i % 8)
        p = jetstream.partition_of(source, event_id, partitions)
        pending[p].append(
            (
                '{"specversion":"1.0","id":"%s","source":"%s","type":"%s","received_at":"%s",'
                '"data":{"seq":%d,"pad":"%s","sent_us":1}}\n'
                % (event_id, source, TYPE, received, i, pad)
            ).encode()
        )
        if len(pending[p]) == PER_MESSAGE:
            out[p].append(b"".join(pending[p]))
            pending[p] = []
    for p, rest in pending.items():
        if rest:
            out[p].append(b"".join(rest))
    return out


async def publish(url: str, messages: dict[int, list[bytes]], partitions: int) -> dict[str, int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        limits = jetstream.StreamLimits(
            max_bytes=16 << 30, max_age_s=0, replicas=1, duplicate_window_s=120, max_msg_size=-1
        )
        await jetstream.ensure_streams(js, jetstream.stream_configs({TYPE: partitions}, limits))
        last: dict[str, int] = {}
        for p, payloads in messages.items():
            subject = jetstream.subject(TYPE, p if partitions > 1 else None)
            for i in range(0, len(payloads), 64):
                acks = await asyncio.gather(
                    *(
                        js.publish(
                            subject,
                            data,
                            headers={jetstream.MSG_ID: uuid.uuid4().hex, jetstream.KIND: "batch"},
                        )
                        for data in payloads[i : i + 64]
                    )
                )
                last[jetstream.stream_name(TYPE, p if partitions > 1 else None)] = max(
                    a.seq for a in acks
                )
        return last
    finally:
        await nc.close()


async def committed(url: str, streams: list[str], legacy: Path) -> dict[str, int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        return {s: (await read_checkpoint(js, s, legacy)).committed_seq for s in streams}
    finally:
        await nc.close()


def run(events: int, partitions: int, loaders: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        root = Path(tmp)
        port = free_port()
        conf = root / "nats.conf"
        conf.write_text(server_config(port=port, store_dir=root / "store"))
        bus = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"nats://127.0.0.1:{port}"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            time.sleep(1.0)
            received = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            last = asyncio.run(publish(url, lines(partitions, events, received), partitions))
            settings = Settings(
                data_dir=str(root / "data"),
                schemas=str(write_schemas(root / "schemas", 1)),
                bus=url,
                stream_replicas=1,
                bucket="1h",
                type_partitions={TYPE: partitions},
                loader_lease_ttl_s=3.0,
                loader_nice=0,
                log_level="warning",
            )
            env = {**os.environ, **settings_env(settings)}
            bus_cpu = cpu_s(bus.pid)
            started = time.monotonic()
            for _ in range(loaders):
                procs.append(
                    subprocess.Popen([sys.executable, "-m", "hourglass", "loader"], env=env)
                )
            legacy = root / "none.json"
            total = sum(last.values())
            marks: dict[float, float] = {}  # share of messages committed -> when
            while True:
                time.sleep(0.25)
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a loader exited")
                done = asyncio.run(committed(url, list(last), legacy))
                share = sum(min(done[s], seq) for s, seq in last.items()) / total
                for mark in (0.1, 0.9):
                    if share >= mark and mark not in marks:
                        marks[mark] = time.monotonic()
                if share >= 1.0:
                    break
            drain = time.monotonic() - started
            loader_cpu = sum(cpu_s(p.pid) for p in procs)
            return {
                "drain_s": drain,
                "events_per_s": events / drain,
                # From 10 % to 90 % committed: without the start (imports,
                # recovery, the group settling) and the last flush.
                "steady_per_s": 0.8 * events / max(1e-9, marks[0.9] - marks[0.1]),
                "loader_cpu_s": loader_cpu,
                "loader_cpu_us_per_event": loader_cpu / events * 1e6,
                "bus_cpu_s": cpu_s(bus.pid) - bus_cpu,
            }
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
            bus.terminate()
            bus.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--loaders", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(
        f"{'loaders':>7} {'drain s':>8} {'events/s':>10} {'10-90 % /s':>11}"
        f" {'loader CPU s':>12} {'µs/event':>9} {'bus CPU s':>9}"
    )
    for _ in range(args.repeat):
        for k in args.loaders:
            r = run(args.events, args.partitions, k)
            print(
                f"{k:>7} {r['drain_s']:>8.1f} {r['events_per_s']:>10,.0f}"
                f" {r['steady_per_s']:>11,.0f}"
                f" {r['loader_cpu_s']:>12.1f} {r['loader_cpu_us_per_event']:>9.2f}"
                f" {r['bus_cpu_s']:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
