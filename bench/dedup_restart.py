"""Restart of a loader whose dedup window holds N keys: how long, how much memory.

    python bench/dedup_restart.py --keys 1000000000 --memory 2952790016 --dir /var/tmp/hg

Builds the index through the real path (``Deduper.add`` / ``plan`` / ``apply``:
hashing, the memtable, run files, sealed filter columns), with commits spread
over 24 h of a simulated clock so every slice fills, then starts a **new process**
that reads it back (``restore``) and reports its wall time and peak RSS (what a
restarting or taking-over loader pays), and probes it: a sample of stored keys
must all be found, as many new keys all kept.  ``--memory`` is the index's
budget (half of ``loader_memory_bytes`` for one type).  Keys are 12 bytes
(a prefix and a counter): ~28 bytes a key on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa

from hourglass.loader.dedup import Deduper
from hourglass.loader.state import DedupState

T0 = 1_700_000_000.0
DAY = 86_400
BATCH = 1 << 20


def keys(start: int, n: int, prefix: bytes = b"k:bn") -> pa.Array:
    """``n`` distinct 12-byte keys: ``prefix`` and a big-endian counter from ``start``."""
    counters = np.arange(start, start + n, dtype=">u8").view(np.uint8).reshape(n, 8)
    raw = np.empty((n, 12), dtype=np.uint8)
    raw[:, :4] = np.frombuffer(prefix, dtype=np.uint8)
    raw[:, 4:] = counters
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(12), n, [None, pa.py_buffer(raw)])
    return fixed.cast(pa.large_binary())


def deduper(lake: Path, memory: int) -> Deduper:
    return Deduper(lake, "bench", window_s=DAY, memory_bytes=memory, disk_bytes=1 << 50)


def build(lake: Path, total: int, memory: int) -> DedupState:
    d = deduper(lake, memory)
    d.restore(None, epoch=0)
    seq, done, started = 0, 0, time.perf_counter()
    while done < total:
        n = min(BATCH, total - done)
        now = T0 + DAY * done / total
        d.add(keys(done, n), now=now)
        done += n
        seq += 1
        if d.due() or done == total:
            plan = d.plan(0, seq, now, force=done == total)
            for final, temp in plan.staged.items():  # saved (nowhere), then published
                (lake / temp).rename(lake / final)
            d.apply(plan, now)
        if seq % 100 == 0:
            rate = done / (time.perf_counter() - started)
            print(f"  built {done:,} keys ({rate / 1e6:.2f} M/s)", flush=True)
    print(
        f"built {total:,} keys in {time.perf_counter() - started:.0f} s: "
        f"{len(d.state.slices)} slices, {sum(len(s.runs) for s in d.state.slices)} runs, "
        f"{d.disk_used / 2**30:.1f} GiB of runs, filter {d.filter.nbytes / 2**30:.2f} GiB, "
        f"effective window {d.effective_window_s(T0 + DAY) / 3600:.1f} h"
    )
    return d.state


def memory_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB.  Not
    ``ru_maxrss``: Linux carries the parent's peak into a child across fork and
    exec, so it reported the building parent's 3 GB, not the restart's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise LookupError(field)


def restore(lake: Path, memory: int, total: int) -> dict[str, float]:
    state = msgspec.json.decode((lake / "state.json").read_bytes(), type=DedupState)
    started = time.perf_counter()
    d = deduper(lake, memory)
    d.restore(state, epoch=0)
    ready = time.perf_counter() - started
    rss_ready, peak_ready = memory_mib("VmRSS"), memory_mib("VmHWM")
    rng = np.random.default_rng(5)
    starts = rng.integers(0, max(1, total - 1000), 64)  # 64 spans of 1,000 stored keys
    old = pa.concat_arrays([keys(int(start), min(1000, total)) for start in starts])
    t = time.perf_counter()
    held = ~d.fresh(old)
    found_s = time.perf_counter() - t
    new = keys(0, 1_000_000, prefix=b"new:")
    t = time.perf_counter()
    kept = d.fresh(new)
    probe_s = time.perf_counter() - t
    return {
        "ready_s": ready,
        "rss_ready_mib": rss_ready,
        "rss_peak_until_ready_mib": peak_ready,
        "rss_peak_mib": memory_mib("VmHWM"),
        "stored_found": float(held.mean()),
        "stored_probe_us_per_key": found_s / len(old) * 1e6,
        "new_kept": float(kept.mean()),
        "new_probe_us_per_key": probe_s / len(new) * 1e6,
        "run_lookups_per_new_key": d.run_lookups / (len(new) + len(old)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=float, default=1e8)
    parser.add_argument("--memory", type=int, default=1 << 30, help="the index's bytes")
    parser.add_argument("--dir", type=Path, required=True, help="an empty folder (kept)")
    parser.add_argument("--restore-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = int(args.keys)
    if args.restore_only:
        print(json.dumps(restore(args.dir, args.memory, total)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    state = build(args.dir, total, args.memory)
    (args.dir / "state.json").write_bytes(msgspec.json.encode(state))
    out = subprocess.run(
        [sys.executable, __file__, "--restore-only", "--keys", str(total)]
        + ["--memory", str(args.memory), "--dir", str(args.dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print("restart in a new process:")
    for name, value in result.items():
        print(f"  {name:<26} {value:,.3f}")


if __name__ == "__main__":
    main()
