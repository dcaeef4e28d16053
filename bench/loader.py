"""Loader cost per event as an hour fills: StreamLoader alone, no bus, no HTTP.

    python bench/loader.py --events 4000000 [--duplicates 0.01]

Feeds bus-shaped NDJSON messages (1,000 events each, as the gateway writes them)
to one StreamLoader in fetches of 32 messages, flushing every 10 fetches, all in
one hour bucket, and prints µs/event (wall and CPU of this process) per slice, so
a cost that grows with the keys already in the hour shows.  Everything lives in
a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from hourglass.bus.consumer import BusMessage
from hourglass.lake.arrow import LakeSchema
from hourglass.loader.state import FileCheckpoints
from hourglass.loader.stream import StreamLoader
from hourglass.schemas.avro import SchemaRegistry
from hourglass_tools.bench.workload import write_schemas

PER_MESSAGE = 1000
PER_FETCH = 32


def message(start: int, received: str, pad: str) -> bytes:
    return b"".join(
        (
            '{"specversion":"1.0","id":"%012d","source":"/bench/p%d","type":"bench.E0",'
            '"received_at":"%s","data":{"seq":%d,"pad":"%s","sent_us":1}}\n'
            % (i, i % 8, received, i, pad)
        ).encode()
        for i in range(start, start + PER_MESSAGE)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--duplicates", type=float, default=0.01)
    parser.add_argument("--slices", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = SchemaRegistry.load(write_schemas(root / "schemas", 1))
        fmt = LakeSchema(next(iter(registry)))
        hour = int(time.time()) // 3600 * 3600
        loader = StreamLoader(
            "bench.E0",
            fmt,
            lake=root / "lake",
            checkpoints=FileCheckpoints(root / "state.json"),
            quarantine=root / "q",
            width_s=3600,
            window_s=24 * 3600,
            closes=False,
            clock=lambda: hour + 60,
        )
        loader.recover()
        received = dt.datetime.fromtimestamp(hour + 30, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        messages = args.events // PER_MESSAGE
        per_slice = max(1, messages // args.slices // PER_FETCH)
        seq = sent = 0
        print(f"{'events in hour':>15} {'wall µs/ev':>11} {'cpu µs/ev':>10}")
        for _ in range(args.slices):
            wall = cpu = 0.0
            n = 0
            for fetch in range(per_slice):
                batch = []
                for _ in range(PER_FETCH):
                    seq += 1
                    if sent and rng.random() < args.duplicates:  # resend an earlier message
                        start = int(rng.integers(0, sent // PER_MESSAGE)) * PER_MESSAGE
                    else:
                        start, sent = sent, sent + PER_MESSAGE
                    batch.append(BusMessage(seq, message(start, received, "x" * 60)))
                    n += PER_MESSAGE
                w, c = time.perf_counter(), time.process_time()
                loader.process(batch)
                if fetch % 10 == 9 or fetch == per_slice - 1:
                    loader.flush()
                wall += time.perf_counter() - w
                cpu += time.process_time() - c
            print(f"{sent:>15,} {wall / n * 1e6:>11.2f} {cpu / n * 1e6:>10.2f}")
        print(f"rows {loader.stats.rows_written:,} duplicates {loader.stats.duplicates:,}")


if __name__ == "__main__":
    main()
