"""Spool choice: segment files vs SQLite (WAL), appends per second per durability policy.

    python bench/spool.py [--events 50000]

Each design appends ~200-byte records one at a time from one thread, as
``Producer.emit`` does: "always" makes every append durable before it returns
(segment: fsync; SQLite: synchronous=FULL, one transaction per append);
"interval" hands each append to the kernel and fsyncs in the background
(segment: every 50 ms; SQLite: synchronous=NORMAL in WAL mode).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from hourglass.producer.spool import Spool

RECORD = (
    b'{"specversion":"1.0","id":"0192f0c2-7a4e-7b1c-9d2e-3f4a5b6c7d8e","source":"urn:x",'
    b'"type":"music.SongSkipped","data":{"track_id":"t-42","position_ms":31000}}' + b" " * 40
)


def segment(n: int, policy: str, root: Path) -> float:
    spool = Spool(root / f"seg-{policy}", fsync=policy)  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(n):
        spool.append(RECORD)
    elapsed = time.perf_counter() - started
    spool.close()
    return n / elapsed


def sqlite(n: int, policy: str, root: Path) -> float:
    db = sqlite3.connect(root / f"spool-{policy}.db", isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute(f"pragma synchronous={'full' if policy == 'always' else 'normal'}")
    db.execute("create table spool (seq integer primary key, payload blob)")
    started = time.perf_counter()
    for _ in range(n):
        db.execute("insert into spool (payload) values (?)", (RECORD,))
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'design':<10} {'policy':<9} {'appends/s':>10}")
        for policy in ("interval", "always"):
            n = args.events if policy == "interval" else max(1, args.events // 20)
            for name, run in (("segments", segment), ("sqlite", sqlite)):
                print(f"{name:<10} {policy:<9} {run(n, policy, root):>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
