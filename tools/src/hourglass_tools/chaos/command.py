"""``hourglass chaos``: a chaos run from the command line.

``hourglass chaos --duration 600 --seed 7 [--dir D]`` prints each fault as it
happens, then the result table; exit status 0 when nothing was lost or
duplicated and every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    chaos = sub.add_parser(
        "chaos", help="kill and pause the pipeline's processes on a seeded schedule, then audit"
    )
    chaos.add_argument("--duration", type=float, default=60.0, help="seconds of faults (60)")
    chaos.add_argument("--seed", type=int, default=7, help="seed of the fault schedule (7)")
    chaos.add_argument(
        "--dir", help="a new or empty folder for the run (default: a new one in the temp folder)"
    )
    chaos.add_argument("--min-faults", type=int, default=0, help="go on until this many faults")
    chaos.add_argument("--sdk-producers", type=int, default=2, help="SDK producer processes (2)")
    chaos.add_argument("--http-producers", type=int, default=2, help="raw HTTP producers (2)")
    chaos.add_argument("--rate", type=float, default=100.0, help="events/s per producer (100)")
    chaos.add_argument(
        "--loaders", type=int, default=1, help="loader processes: an owner and standbys (1)"
    )
    chaos.add_argument("--quiet", action="store_true", help="print only the result")
    chaos.set_defaults(run=cmd_chaos)


def cmd_chaos(args: argparse.Namespace) -> int:
    from hourglass_tools.chaos.harness import ChaosConfig, run_chaos

    folder = args.dir or tempfile.mkdtemp(
        prefix=f"hourglass-chaos-{time.strftime('%Y%m%d-%H%M%S')}-"
    )
    config = ChaosConfig(
        directory=Path(folder),
        duration_s=args.duration,
        seed=args.seed,
        min_faults=args.min_faults,
        sdk_producers=args.sdk_producers,
        http_producers=args.http_producers,
        rate=args.rate,
        loaders=args.loaders,
        out=None if args.quiet else sys.stdout,
    )
    report = run_chaos(config)
    print("\n" + report.render(), flush=True)
    return 0 if report.ok else 1
