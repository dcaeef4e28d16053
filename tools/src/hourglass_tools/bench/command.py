"""``hourglass bench``: measure the pipeline and its ceilings on this machine.

``hourglass bench --duration 60s`` finds the pipeline's maximum (closed loop),
runs it open loop at 50 % of that for 60 s, and prints events/s, latency
percentiles, ratios to the ceilings, send-to-lake latency, bucket close delay,
loader lag and peak RSS; ``--rate max`` measures the maximum itself for the
whole duration, ``--rate 500k`` a fixed rate.  Results go to ``--out``
(``result.json``, ``report.html``).  Exit status: 0, or 1 if an acknowledged
event is missing from the lake or one is there twice, 2 if the bench itself failed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    bench = sub.add_parser(
        "bench", help="benchmark the pipeline and its ceilings on this machine (loopback)"
    )
    bench.add_argument("--duration", default="60s", help="measured run: 60s, 5m ... (60s)")
    bench.add_argument(
        "--rate",
        default="50%",
        help="max (closed loop), P%% of the maximum found first, or events/s: 500k (50%%)",
    )
    bench.add_argument("--connections", type=int, default=4, help="HTTP connections (4)")
    bench.add_argument("--events-per-request", type=int, default=1000, help="batch size (1000)")
    bench.add_argument("--event-bytes", type=int, default=160, help="size of one event (160)")
    bench.add_argument("--types", type=int, default=2, help="event types, one stream each (2)")
    bench.add_argument(
        "--duplicates", type=float, default=0.01, help="share of requests resent as-is (0.01)"
    )
    bench.add_argument("--warmup", default="2s", help="unmeasured start of every phase (2s)")
    bench.add_argument("--probe", default="10s", help="search for the maximum, for P%% (10s)")
    bench.add_argument("--ceiling-duration", default="10s", help="each ceiling's run (10s)")
    bench.add_argument("--no-ceilings", action="store_true", help="skip the ceilings")
    bench.add_argument("--workers", type=int, default=1, help="gateway processes (1)")
    bench.add_argument(
        "--no-loader", action="store_true", help="ingest only: gateway and bus, no lake"
    )
    bench.add_argument("--bucket", default="1m", help="lake bucket width (1m)")
    bench.add_argument(
        "--loader-nice", type=int, default=None, help="the loader's nice value (loader_nice: 5)"
    )
    bench.add_argument("--close-timeout", default="60s", help="wait for the last bucket (60s)")
    bench.add_argument(
        "--stream-max-bytes",
        type=int,
        default=None,
        help="each stream's budget in bytes (half the free disk); a run of 5m or more is a "
        "soak: per-minute table and growth verdict",
    )
    bench.add_argument(
        "--standby", action="store_true", help="run a second loader, every stream's standby"
    )
    bench.add_argument(
        "--kill-loader-at",
        default=None,
        help="kill -9 the owning loader this far into the run, e.g. 15m (implies --standby)",
    )
    bench.add_argument(
        "--profile", default="0", help="py-spy the gateway and loader this long, e.g. 20s (off)"
    )
    bench.add_argument(
        "--sequenced",
        action="store_true",
        help="events with the SDK's producer sequence (the loader dedups them by sequence)",
    )
    bench.add_argument("--out", help="folder for result.json and report.html")
    bench.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    bench.set_defaults(run=cmd_bench)


def config_from(args: argparse.Namespace) -> Any:
    from hourglass_tools.bench.runner import BenchConfig
    from hourglass_tools.bench.workload import Workload, parse_duration, parse_rate

    mode, rate = parse_rate(args.rate)
    workload = Workload(
        events_per_request=args.events_per_request,
        event_bytes=args.event_bytes,
        types=args.types,
        duplicates=args.duplicates,
        sequenced=args.sequenced,
    )
    out = args.out or f"hourglass-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    return BenchConfig(
        workload=workload,
        duration_s=parse_duration(args.duration),
        mode=mode,
        rate=rate,
        connections=args.connections,
        warmup_s=parse_duration(args.warmup) if args.warmup not in ("0", "0s") else 0.0,
        probe_s=parse_duration(args.probe),
        ceiling_s=parse_duration(args.ceiling_duration),
        ceilings=not args.no_ceilings,
        workers=args.workers,
        loader=not args.no_loader,
        loader_nice=args.loader_nice,
        bucket=args.bucket,
        close_timeout_s=parse_duration(args.close_timeout),
        stream_max_bytes=args.stream_max_bytes,
        standby=args.standby,
        kill_loader_at_s=parse_duration(args.kill_loader_at) if args.kill_loader_at else None,
        profile_s=parse_duration(args.profile) if args.profile not in ("0", "0s") else 0.0,
        keep=args.keep,
        out=Path(out),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    import sys

    from hourglass.config import bucket_seconds
    from hourglass.exceptions import HourglassError
    from hourglass_tools.bench import report
    from hourglass_tools.bench.runner import run

    try:
        config = config_from(args)
        bucket_seconds(config.bucket)
    except (ValueError, HourglassError) as exc:
        print(f"hourglass bench: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        import asyncio

        runner = asyncio.run
    try:
        result = runner(run(config))
    except (RuntimeError, OSError, HourglassError) as exc:
        print(f"hourglass bench failed: {exc}", file=sys.stderr)
        return 2
    print(report.render(result), flush=True)
    json_path, html_path = report.write(result, config.out)
    print(f"\nwrote {json_path} and {html_path}")
    lake = result["pipeline"].get("lake") or {}
    grows = (result["pipeline"].get("soak") or {}).get("verdict", {}).get("grows")
    return 1 if lake.get("missing") or lake.get("twice") or grows else 0
