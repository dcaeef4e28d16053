"""Loader cost per event as an hour fills: StreamLoader alone, no bus, no HTTP.

    python bench/loader.py --events 4000000 [--duplicates 0.01] [--sequenced]
        [--per-fetch 32] [--per-message 1000]

Feeds bus-shaped NDJSON messages (1,000 events each, as the gateway writes them)
to one StreamLoader in fetches of 32 messages (a loader behind; one not behind
gets what a fetch finds: ``--per-fetch 1``), flushing every ~320,000 events, all
in one hour bucket, and prints µs/event (wall and CPU of this process) per slice, so
a cost that grows with the keys already in the hour shows.  Everything lives in
a temporary folder.  Beside it, pyarrow alone on the same bytes (its JSON reader
per fetch, its Parquet writer per flush) and the ratio of the two; the RSS of
the process, the keys in the dedup index and the bytes of its run files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import json as pa_json

from hourglass.bus.consumer import BusMessage
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.parquet import write_table
from hourglass.loader.state import FileCheckpoints
from hourglass.loader.stream import StreamLoader
from hourglass.schemas.avro import SchemaRegistry
from hourglass_tools.bench.workload import write_schemas

PER_MESSAGE = 1000
PER_FETCH = 32


def message(
    start: int, received: str, pad: str, *, sequenced: bool = False, count: int = PER_MESSAGE
) -> bytes:
    """1,000 events; ``sequenced``: as 8 SDK producers send them (``hgproducer``,
    ``hgseq``, ``hgacked``), event ``i`` being seq ``i // 8 + 1`` of producer ``i % 8``,
    with the floor every event before the message's first is under."""
    floor = max(0, start // 8 - 1)
    return b"".join(
        (
            '{"specversion":"1.0","id":"%012d","source":"/bench/p%d","type":"bench.E0",'
            '"received_at":"%s","data":{"seq":%d,"pad":"%s","sent_us":1}%s}\n'
            % (
                i,
                i % 8,
                received,
                i,
                pad,
                ',"hgproducer":"p%d","hgseq":%d,"hgacked":%d' % (i % 8, i // 8 + 1, floor)
                if sequenced
                else "",
            )
        ).encode()
        for i in range(start, start + count)
    )


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Baseline:
    """pyarrow alone on the same bytes: its JSON reader per fetch, its Parquet writer
    per flush (what the loader cannot do in less time)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tables: list[pa.Table] = []
        self.seconds = 0.0
        self.files = 0

    def fetch(self, payload: bytes) -> None:
        t = time.perf_counter()
        self.tables.append(pa_json.read_json(io.BytesIO(payload)))
        self.seconds += time.perf_counter() - t

    def flush(self) -> None:
        t = time.perf_counter()
        self.files += 1
        write_table(pa.concat_tables(self.tables), self.folder / f"{self.files}.parquet")
        (self.folder / f"{self.files}.parquet").unlink()
        self.tables = []
        self.seconds += time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--duplicates", type=float, default=0.01)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--dedup-memory", type=int, default=1 << 30, help="bytes (default 1 GiB)")
    parser.add_argument("--no-baseline", action="store_true", help="skip pyarrow alone")
    parser.add_argument(
        "--per-fetch", type=int, default=PER_FETCH, help="messages per process() call"
    )
    parser.add_argument("--per-message", type=int, default=PER_MESSAGE, help="events per message")
    parser.add_argument(
        "--sequenced", action="store_true", help="events of 8 SDK producers (dedup by sequence)"
    )
    args = parser.parse_args()
    per_message, per_fetch = args.per_message, args.per_fetch
    flush_every = max(1, 320_000 // (per_message * per_fetch))  # fetches: ~320 k events
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
            dedup_memory_bytes=args.dedup_memory,
            closes=False,
            clock=lambda: hour + 60,
        )
        loader.recover()
        baseline = None if args.no_baseline else Baseline(root)
        received = dt.datetime.fromtimestamp(hour + 30, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        messages = args.events // per_message
        per_slice = max(1, messages // args.slices // per_fetch)
        seq = sent = 0
        print(
            f"{'events sent':>13} {'wall µs/ev':>11} {'cpu µs/ev':>10} {'pyarrow µs/ev':>14}"
            f" {'ratio':>6} {'RSS MiB':>8} {'index keys':>11} {'runs MiB':>9}"
        )
        for _ in range(args.slices):
            wall = cpu = base = 0.0
            n = 0
            before = baseline.seconds if baseline else 0.0
            for fetch in range(per_slice):
                batch = []
                for _ in range(per_fetch):
                    seq += 1
                    if sent and rng.random() < args.duplicates:  # resend an earlier message
                        start = int(rng.integers(0, sent // per_message)) * per_message
                    else:
                        start, sent = sent, sent + per_message
                    data = message(
                        start, received, "x" * 60, sequenced=args.sequenced, count=per_message
                    )
                    batch.append(BusMessage(seq, data))
                    n += per_message
                flush = fetch % flush_every == flush_every - 1 or fetch == per_slice - 1
                w, c = time.perf_counter(), time.process_time()
                loader.process(batch)
                if flush:
                    loader.flush()
                wall += time.perf_counter() - w
                cpu += time.process_time() - c
                if baseline is not None:
                    baseline.fetch(b"".join(m.data for m in batch))
                    if flush:
                        baseline.flush()
            assert loader.deduper is not None
            if baseline is not None:
                base = baseline.seconds - before
            print(
                f"{sent:>13,} {wall / n * 1e6:>11.2f} {cpu / n * 1e6:>10.2f}"
                f" {base / n * 1e6:>14.2f} {wall / base if base else 0:>6.2f}"
                f" {rss_mib():>8.0f} {loader.deduper.keys:>11,}"
                f" {loader.deduper.disk_used / 2**20:>9.0f}",
                flush=True,
            )
        print(f"rows {loader.stats.rows_written:,} duplicates {loader.stats.duplicates:,}")
        print(f"effective window {loader.deduper.effective_window_s(hour + 60) / 3600:.1f} h")
        print(
            f"producers {len(loader.deduper.producers)}, ranges {loader.deduper.producers.ranges}"
        )


if __name__ == "__main__":
    main()
