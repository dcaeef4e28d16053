"""A run's numbers: summaries, ratios to the ceilings, the targets, the printout."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hourglass_tools.bench.lake import LakeResult
from hourglass_tools.bench.loadgen import LoadResult

if TYPE_CHECKING:
    from hourglass_tools.bench.runner import BenchConfig

# The targets.
INGEST_EPS = 1_000_000
INGEST_BUS_RATIO = 0.8
E2E_EPS = 500_000
E2E_SECONDS = 300
ACK_P99_MS = 20.0
LAKE_P99_S = 10.0
CLOSE_S = 60.0


def ratio(value: float | None, ceiling: float | None) -> float | None:
    """``value / ceiling``, or None when either is unknown or the ceiling is 0."""
    if value is None or not ceiling:
        return None
    return value / ceiling


def load_summary(load: LoadResult) -> dict[str, Any]:
    return {
        "events_per_s": round(load.events_per_s),
        "requests_per_s": round(load.requests / load.measured_s, 1) if load.measured_s else 0,
        "target_eps": load.plan.rate_eps,
        "measured_s": round(load.measured_s, 2),
        "connections": load.plan.connections,
        "ack_latency_ms": load.latency.summary(),
        "errors": load.errors,
        "resends": load.resends,
        "lagging": load.lagging,
        "late_slots": load.late_slots,
    }


def one_line(summary: dict[str, Any]) -> str:
    lat = summary["ack_latency_ms"]
    errors = sum(summary["errors"].values())
    return (
        f"{summary['events_per_s']:>12,} events/s  ack p50 {lat['p50']:.2f} ms  "
        f"p99 {lat['p99']:.2f} ms  p99.9 {lat['p99.9']:.2f} ms  max {lat['max']:.2f} ms"
        + (f"  errors {errors}" if errors else "")
        + ("  (could not keep the rate)" if summary.get("lagging") else "")
    )


def config_json(config: BenchConfig) -> dict[str, Any]:
    out = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("workload", "out")}
    out["workload"] = dataclasses.asdict(config.workload)
    out["out"] = str(config.out)
    return out


def _series(load: LoadResult) -> list[dict[str, float]]:
    out = []
    for i, second in enumerate(load.seconds):
        lat = second.latency
        out.append(
            {
                "t": i,
                "acked_eps": second.acked,
                "errors": second.errors,
                "p50_ms": lat.percentile(50) / 1e3,
                "p90_ms": lat.percentile(90) / 1e3,
                "p99_ms": lat.percentile(99) / 1e3,
                "max_ms": lat.max / 1e3,
            }
        )
    return out


def _loader_series(samples: list[dict[str, Any]], t0: float) -> list[dict[str, float]]:
    """Lag and rows landed per second; rows/s over 5 samples, since the loader
    counts rows once per flush (every 2 s)."""
    rows = [s for s in samples if "loader_rows" in s]
    out = []
    for i, s in enumerate(rows):
        row = {"t": round(s["t"] - t0, 2), "lag_events": s["lag_events"], "rows_per_s": 0.0}
        row["lag_messages"] = s["lag_messages"]
        # MiB: the largest loader's RSS; the owner's dedup index, unflushed rows, Arrow pool.
        row["rss_mib"] = max(
            (v for n, v in s.get("rss_mib", {}).items() if n.startswith("loader") and v),
            default=0.0,
        )
        for key in ("dedup_memory", "pending_bytes", "arrow_bytes"):
            row[f"{key.removesuffix('_bytes')}_mib"] = round(s.get(key, 0.0) / 2**20, 1)
        before = rows[max(0, i - 5)]
        if s["t"] > before["t"]:
            landed = s["loader_rows"] + s["loader_duplicates"]
            landed -= before["loader_rows"] + before["loader_duplicates"]
            row["rows_per_s"] = round(landed / (s["t"] - before["t"]))
        out.append(row)
    return out


def _lake_json(lake: LakeResult, window: tuple[float, float], unique: int) -> dict[str, Any]:
    delays = lake.close_delays(window)
    return {
        "lake": {
            "latency_s": lake.latency.summary(scale=1e-6),
            "rows": lake.rows,
            "files": lake.files,
            "rows_sent_in_window": lake.rows_in_window,
            "rows_timed": lake.rows_timed,  # of those, timed by the file they landed in
            "unique_acked_events": unique,
            # By id when the ids are the bench's (lake.py); else rows against acks.
            "missing": lake.missing if lake.ids_checked else max(unique - lake.rows, 0),
            "twice": lake.twice if lake.ids_checked else None,
            "distinct_ids": lake.distinct if lake.ids_checked else None,
            "unacknowledged_extra": (
                lake.unacked if lake.ids_checked else max(lake.rows - unique, 0)
            ),
            "read_s": round(lake.read_s, 2),
        },
        "close_delay_s": {
            "buckets": len(delays),
            "median": round(statistics.median(delays), 3) if delays else None,
            "max": round(max(delays), 3) if delays else None,
        },
        "closes": lake.closes,
    }


def pipeline_json(
    measured: dict[str, Any], load: LoadResult, lake: LakeResult | None, unique_acked: int
) -> dict[str, Any]:
    """Everything about the measured run; ``lake`` None: ingest only, no loader."""
    samples = measured.get("samples", [])
    out = {
        **{k: v for k, v in measured.items() if k not in ("samples",)},
        **load_summary(load),
        "series": _series(load),
        "bus": bus_stats(samples, load.window),
        "unique_acked_events": unique_acked,
    }
    if lake is not None:
        out.update(_lake_json(lake, load.window, unique_acked))
        out["loader_series"] = _loader_series(samples, load.window[0])
        out["loader_drain_eps"] = drain_rate(samples, load.window[1])
    return out


def drain_rate(samples: list[dict[str, Any]], end: float) -> float | None:
    """Events/s the loader landed after the load stopped, while it had a backlog:
    its throughput with the machine to itself."""
    after = [s for s in samples if s["t"] >= end + 1.0 and "loader_rows" in s]
    busy = [s for s in after if s["lag_messages"] > 0]
    if len(busy) < 3:
        return None
    a, b = busy[0], busy[-1]
    landed = b["loader_rows"] + b["loader_duplicates"] - a["loader_rows"] - a["loader_duplicates"]
    return round(landed / (b["t"] - a["t"])) if b["t"] > a["t"] else None


def bus_stats(samples: list[dict[str, Any]], window: tuple[float, float]) -> dict[str, Any]:
    """The gateway's bus messages over the window: per second, events in each,
    and the mean time from publish to JetStream's acknowledgement."""
    inside = [s for s in samples if window[0] <= s["t"] <= window[1] and "bus_messages" in s]
    if len(inside) < 2:
        return {}
    a, b = inside[0], inside[-1]
    messages = b["bus_messages"] - a["bus_messages"]
    if messages <= 0:
        return {}
    return {
        "messages_per_s": round(messages / (b["t"] - a["t"]), 1),
        "events_per_message": round((b["bus_events"] - a["bus_events"]) / messages, 1),
        "publish_ms_mean": round(1e3 * (b["publish_s"] - a["publish_s"]) / messages, 2),
    }


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    pipe = result.get("pipeline", {})
    ceil = result.get("ceilings", {})
    measured = pipe.get("events_per_s")
    maximum = measured if pipe.get("mode") == "max" else pipe.get("probe", {}).get("events_per_s")
    out: dict[str, float | None] = {}
    for name in ("transport", "bus"):
        c = ceil.get(name, {}).get("events_per_s")
        out[f"run_to_{name}"] = ratio(measured, c)
        out[f"max_to_{name}"] = ratio(maximum, c)
    return out


def _target(name: str, goal: str, value: str, met: bool | None, margin: str) -> dict[str, Any]:
    return {"target": name, "goal": goal, "value": value, "met": met, "margin": margin}


def _times(value: float, goal: float) -> str:
    """How far a value is from its goal, as a factor (>1: met with room)."""
    return f"{value / goal:.2f}x" if goal else "-"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: value, met or not, and by how much (a factor:
    above 1 is met for a rate, below 1 is met for a delay)."""
    pipe = result["pipeline"]
    mode = pipe.get("mode")
    top = pipe["events_per_s"] if mode == "max" else pipe.get("probe", {}).get("events_per_s")
    out = []
    if top:
        goal = f">= {INGEST_EPS:,} events/s"
        out.append(
            _target("durable ingest", goal, f"{top:,}", top >= INGEST_EPS, _times(top, INGEST_EPS))
        )
    to_bus = result["ratios"].get("max_to_bus")
    if to_bus is not None:
        out.append(
            _target(
                "ingest / raw JetStream",
                f">= {INGEST_BUS_RATIO}x",
                f"{to_bus:.2f}x",
                to_bus >= INGEST_BUS_RATIO,
                _times(to_bus, INGEST_BUS_RATIO),
            )
        )
    eps, lag, seconds = pipe["events_per_s"], pipe.get("lag", {}), pipe["measured_s"]
    if mode != "max" and "lake" in pipe:
        slope = lag.get("slope_eps", 0.0)
        flat = abs(slope) <= 0.01 * max(eps, 1)
        goal = f">= {E2E_EPS:,}/s for {E2E_SECONDS} s, lag flat"
        value = f"{eps:,}/s for {seconds:.0f} s, lag {slope:+,.0f}/s"
        loader_rss = (pipe.get("rss_trend") or {}).get("loader")
        if loader_rss:
            value += f", loader RSS {loader_rss['slope_mib_per_min']:+.0f} MiB/min"
        met = eps >= E2E_EPS and flat and seconds >= E2E_SECONDS
        out.append(_target("end-to-end sustained", goal, value, met, _times(eps, E2E_EPS)))
    p99 = pipe["ack_latency_ms"]["p99"]
    config = result["config"]
    at_half = config["mode"] == "share" and config["rate"] == 0.5
    where = "" if at_half else f" (at {'the maximum' if mode == 'max' else 'another rate'})"
    out.append(
        _target(
            "ack p99 at 50 % of max",
            f"<= {ACK_P99_MS:g} ms",
            f"{p99:.2f} ms" + where,
            p99 <= ACK_P99_MS if at_half else None,
            _times(p99, ACK_P99_MS),
        )
    )
    if "lake" not in pipe:
        return out
    lake_p99 = pipe["lake"]["latency_s"]["p99"]
    out.append(
        _target(
            "send to lake p99",
            f"<= {LAKE_P99_S:g} s",
            f"{lake_p99:.2f} s",
            lake_p99 <= LAKE_P99_S,
            _times(lake_p99, LAKE_P99_S),
        )
    )
    close = pipe["close_delay_s"]["max"]
    if close is not None:
        out.append(
            _target(
                "bucket close delay (max)",
                f"<= {CLOSE_S:g} s",
                f"{close:.1f} s",
                close <= CLOSE_S,
                _times(close, CLOSE_S),
            )
        )
    return out


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"py-spy          {profile['error']}"]
    lines = []
    for name in ("gateway", "loader"):
        p = profile.get(name) or {}
        if p.get("self"):
            top = ", ".join(f"{frame} {share}%" for frame, share in p["self"][:4])
            lines.append(f"py-spy {name:<9}{top}")
        elif "error" in p:
            lines.append(f"py-spy {name:<9}{str(p['error'])[:200]}")
    return lines


def _lake_lines(pipe: dict[str, Any]) -> list[str]:
    lake, close, lag = pipe["lake"], pipe["close_delay_s"], pipe["lag"]
    s = lake["latency_s"]
    drain = pipe.get("loader_drain_eps")
    return [
        f"send to lake    p50 {s['p50']:.2f} s  p99 {s['p99']:.2f} s  max {s['max']:.2f} s"
        f"  ({lake.get('rows_timed', 0):,} rows timed as they landed)",
        f"lake rows       {lake['rows']:,}; unique acked "
        f"{lake['unique_acked_events']:,}; missing {lake['missing']:,}"
        + (f"; twice {lake['twice']:,}" if lake.get("twice") is not None else "; ids not checked"),
        f"bucket close    median {close['median']} s  max {close['max']} s "
        f"({close['buckets']} buckets)   drain {pipe.get('drain_s', 0):.1f} s",
        f"loader lag      max {lag['max']:,.0f} events  slope {lag['slope_eps']:,.0f} events/s"
        + (f"  (alone, after the load: {drain:,.0f} events/s)" if drain else ""),
    ]


def render(result: dict[str, Any]) -> str:
    pipe = result["pipeline"]
    lines = ["", "== results =="]
    for name, c in result.get("ceilings", {}).items():
        lines.append(f"ceiling {name:<10}{one_line(c)}")
    if "probe" in pipe:
        lines.append(f"pipeline max    {one_line(pipe['probe'])}  (probe, closed loop)")
    target = pipe.get("target_eps")
    label = f"at {target:,.0f}/s" if target else "maximum"
    lines.append(f"pipeline run    {one_line(pipe)}  ({label})")
    r = result["ratios"]
    lines.append(
        f"ratios          max/transport {_fmt_ratio(r.get('max_to_transport'))}  "
        f"max/bus {_fmt_ratio(r.get('max_to_bus'))}  run/transport "
        f"{_fmt_ratio(r.get('run_to_transport'))}  run/bus {_fmt_ratio(r.get('run_to_bus'))}"
    )
    if "lake" in pipe:
        lines += _lake_lines(pipe)
    bus = pipe.get("bus", {})
    if bus:
        lines.append(
            f"gateway → bus   {bus['messages_per_s']:,.0f} messages/s of "
            f"{bus['events_per_message']:,.0f} events, publish→ack {bus['publish_ms_mean']} ms mean"
        )
    rss = "  ".join(f"{k} {v:.0f}" for k, v in pipe.get("peak_rss_mib", {}).items() if v)
    cores = "  ".join(f"{k} {v:.2f}" for k, v in pipe.get("cores", {}).items() if v is not None)
    lines.append(f"peak RSS MiB    {rss}")
    trend = pipe.get("rss_trend") or {}
    if trend:
        growth = "  ".join(
            f"{k} {v['first_mib']:.0f}→{v['last_mib']:.0f} ({v['slope_mib_per_min']:+.0f}/min)"
            for k, v in trend.items()
        )
        lines.append(f"RSS in window   {growth}")
    lines.append(f"CPU cores       {cores}")
    kill = pipe.get("loader_kill")
    if kill:
        took = kill.get("takeover_s")
        after = f"{took:.1f} s later" if took is not None else "NEVER (within the run)"
        lines.append(
            f"loader kill     {kill['victim']} (the owner) killed with SIGKILL at "
            f"{time.strftime('%H:%M:%S', time.gmtime(kill['at']))}; the standby's first commit "
            f"{after}"
        )
    lines += _profile_lines(pipe.get("profile") or {})
    if "soak" in pipe:
        from hourglass_tools.bench import soak

        lines += soak.render(pipe["soak"])
    lines.append("")
    lines.append(f"{'target':<28}{'goal':<44}{'value':<44}{'met':<6}margin")
    for t in result["targets"]:
        met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
        lines.append(f"{t['target']:<28}{t['goal']:<44}{t['value']:<44}{met:<6}{t['margin']}")
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    import json

    from hourglass_tools.bench.plot import html

    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "result.json", out / "report.html"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    html_path.write_text(html(result, render(result)))
    return json_path, html_path
