"""Soak: does anything grow without bound?  Per-minute rows and their trends.

A bench run of ``SOAK_MIN_S`` or more (``hourglass bench --rate 50k --duration
30m``) is a soak.  From the once-a-second samples it reports, per minute:
acknowledged rate, loader lag, each process's RSS, bytes in the bench's
streams, disk used by the lake and by the loader's state; then the slope of
each over the last ``WINDOW_MIN`` minutes after ``WARMUP_MIN``, and a verdict.

"Grows without bound" (the run fails) is a slope, per minute, above:

* RSS of any process: 1 % of its mean in the window;
* loader lag: 1 % of a minute's acknowledged events;
* stream bytes: 1 % of the budget (retention should hold them flat);
* the loader's state on disk: 1 % of its mean, and more than 1 MiB;
* compaction's backlog: half a closed bucket per minute (it cannot keep up).

The lake itself grows by design (with ``lake_retention_days`` off) and is
reported, not judged.
"""

from __future__ import annotations

from typing import Any

from hourglass_tools.bench.pipeline import slope

SOAK_MIN_S = 300.0
WARMUP_MIN = 5
WINDOW_MIN = 20
JUDGE_MIN = 10  # fewer minutes after the warm-up: slopes shown, not judged (noise)
GROWTH = 0.01  # per minute, of the series' scale
BACKLOG_PER_MIN = 0.5  # closed buckets waiting for compaction


def per_minute(samples: list[dict[str, Any]], start: float) -> list[dict[str, Any]]:
    """One row per whole minute after ``start``: the last sample of each minute."""
    points = [s for s in samples if "loader_rows" in s and s["t"] >= start]
    if not points:
        return []
    last: dict[int, dict[str, Any]] = {}
    for s in points:
        last[int((s["t"] - start) // 60)] = s
    rows: list[dict[str, Any]] = []
    before = points[0]
    for minute in sorted(last):
        s = last[minute]
        span = s["t"] - before["t"]
        acked = float(s.get("acked", 0.0)) - float(before.get("acked", 0.0))
        rows.append(
            {
                "minute": minute + 1,
                "acked_eps": acked / span if span > 0 else 0.0,
                "lag_events": float(s.get("lag_events", 0.0)),
                "rss_mib": dict(s.get("rss_mib") or {}),
                "stream_bytes": float(s.get("stream_bytes", 0.0)),
                "lake_bytes": float(s.get("lake_bytes", 0.0)),
                "state_bytes": float(s.get("state_bytes", 0.0)),
                "compaction_backlog": float(s.get("compaction_backlog", 0.0)),
                "buckets_compacted": float(s.get("buckets_compacted", 0.0)),
            }
        )
        before = s
    return rows


def verdict(rows: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    """Slopes per minute over the trend window, and which of them grow without bound."""
    window = [r for r in rows if r["minute"] > WARMUP_MIN][-WINDOW_MIN:]
    judged = len(window) >= JUDGE_MIN
    if len(window) < 3:
        window = rows[len(rows) // 2 :]  # a short run: its second half
    out: dict[str, Any] = {"minutes": [r["minute"] for r in window], "slopes": {}, "grows": []}
    if len(window) < 3:
        out["note"] = "too short for a trend (3 minutes after the warm-up at least)"
        return out
    if not judged:
        out["note"] = (
            f"not judged: {len(window)} minutes after the warm-up, {JUDGE_MIN} needed "
            "(over a few minutes the slopes are noise)"
        )

    def judge(name: str, values: list[float], limit: float) -> None:
        per_min = slope([(float(r["minute"]), v) for r, v in zip(window, values, strict=True)])
        out["slopes"][name] = {"per_min": per_min, "limit": limit}
        if judged and per_min > limit:
            out["grows"].append(name)

    names = sorted({n for r in window for n in r["rss_mib"]})
    loaders = [n for n in names if n.startswith("loader")]
    if len(loaders) > 1:
        # An owner and its hot standby hold the same index, and a killed owner's
        # RSS drops to 0: the largest is the owner's memory (a sum would hide
        # the standby's growth behind the owner's disappearance).
        names = [n for n in names if n not in loaders]
        mib = [max(float(r["rss_mib"].get(n) or 0.0) for n in loaders) for r in window]
        judge("rss loaders (largest) MiB", mib, GROWTH * sum(mib) / len(mib))
    for name in names:
        mib = [float(r["rss_mib"].get(name) or 0.0) for r in window]
        judge(f"rss {name} MiB", mib, GROWTH * sum(mib) / len(mib))
    events_per_min = 60.0 * sum(r["acked_eps"] for r in window) / len(window)
    judge("loader lag events", [r["lag_events"] for r in window], GROWTH * events_per_min)
    if budget > 0:
        judge("stream bytes", [r["stream_bytes"] for r in window], GROWTH * budget)
    state = [r["state_bytes"] for r in window]
    judge("loader state bytes", state, max(GROWTH * sum(state) / len(state), 1 << 20))
    backlog = [float(r.get("compaction_backlog", 0.0)) for r in window]
    judge("compaction backlog buckets", backlog, BACKLOG_PER_MIN)
    lake = [r["lake_bytes"] for r in window]
    out["slopes"]["lake bytes"] = {
        "per_min": slope([(float(r["minute"]), v) for r, v in zip(window, lake, strict=True)]),
        "limit": None,
    }
    return out


def render(soak: dict[str, Any]) -> list[str]:
    rows, judged = soak["rows"], soak["verdict"]
    names = sorted({n for r in rows for n in r["rss_mib"]})
    head = f"{'min':>4} {'acked/s':>10} {'lag':>10} " + " ".join(f"{n[:10]:>10}" for n in names)
    lines = [
        "",
        "== soak (per minute; RSS in MiB, bytes in MiB) ==",
        head + "  stream    lake   state  compacted backlog",
    ]
    for r in rows:
        rss = " ".join(f"{(r['rss_mib'].get(n) or 0):>10.0f}" for n in names)
        lines.append(
            f"{r['minute']:>4} {r['acked_eps']:>10,.0f} {r['lag_events']:>10,.0f} {rss}"
            f"  {r['stream_bytes'] / 2**20:>6.0f} {r['lake_bytes'] / 2**20:>7.0f}"
            f" {r['state_bytes'] / 2**20:>7.1f}"
            f" {r.get('buckets_compacted', 0):>10.0f} {r.get('compaction_backlog', 0):>7.0f}"
        )
    if "minutes" not in judged or len(judged["minutes"]) < 3:
        lines.append(judged.get("note", ""))
        return lines
    minutes = judged["minutes"]
    lines.append(f"trend over minutes {minutes[0]}–{minutes[-1]}:")
    for name, s in judged["slopes"].items():
        limit = s["limit"]
        over = limit is not None and s["per_min"] > limit
        flag = "" if limit is None else ("  GROWS" if over else "  flat")
        bound = "" if limit is None else f" (limit {limit:,.1f})"
        lines.append(f"  {name:<24} {s['per_min']:>+14,.1f}/min{bound}{flag}")
    if judged.get("note"):
        lines.append("soak: " + judged["note"])
    else:
        grows = judged["grows"]
        lines.append("soak: " + ("FAILED: " + ", ".join(grows) if grows else "ok"))
    return lines
