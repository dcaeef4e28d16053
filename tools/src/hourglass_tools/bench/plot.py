"""A self-contained HTML report with inline SVG charts (no plotting library)."""

from __future__ import annotations

import html as html_lib
import json
import math
from collections.abc import Sequence
from typing import Any

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 260, 70, 150, 24, 36


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / n
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def chart(
    title: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    y_label: str,
    log_y: bool = False,
) -> str:
    """An SVG line chart of ``(name, [(x, y), ...])`` series."""
    points = [p for _, pts in series for p in pts if not log_y or p[1] > 0]
    if not points:
        return f"<p>{html_lib.escape(title)}: no data</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    ys = [p[1] for p in points]

    def fy(v: float) -> float:
        return math.log10(v) if log_y else v

    y0 = fy(min(ys)) if log_y else min(0.0, min(ys))
    y1 = fy(max(ys))
    if log_y:
        y0, y1 = math.floor(y0), math.ceil(y1)
    y1 = y1 if y1 > y0 else y0 + 1
    x1 = x1 if x1 > x0 else x0 + 1
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * iw

    def sy(y: float) -> float:
        return PAD_T + ih - (fy(y) - y0) / (y1 - y0) * ih

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-size="11">']
    out.append(f'<text x="{PAD_L}" y="14" font-weight="bold">{html_lib.escape(title)}</text>')
    out.append(
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{iw}" height="{ih}" fill="none" stroke="#999"/>'
    )
    yticks = [10.0**e for e in range(int(y0), int(y1) + 1)] if log_y else _ticks(y0, y1)
    for t in yticks:
        y = sy(t)
        out.append(
            f'<line x1="{PAD_L}" x2="{PAD_L + iw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 8):
        x = sx(t)
        out.append(f'<text x="{x:.1f}" y="{PAD_T + ih + 14}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{PAD_L + iw / 2}" y="{H - 4}" text-anchor="middle">seconds</text>')
    out.append(
        f'<text x="12" y="{PAD_T + ih / 2}" transform="rotate(-90 12 {PAD_T + ih / 2})" '
        f'text-anchor="middle">{html_lib.escape(y_label)}</text>'
    )
    for i, (name, pts) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        shown = [(x, y) for x, y in pts if not log_y or y > 0]
        if shown:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>'
            )
        ly = PAD_T + 14 + 16 * i
        out.append(
            f'<line x1="{W - PAD_R + 10}" x2="{W - PAD_R + 30}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text x="{W - PAD_R + 34}" y="{ly}">{html_lib.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def html(result: dict[str, Any], text: str) -> str:
    pipe = result.get("pipeline", {})
    series = pipe.get("series", [])
    loader = pipe.get("loader_series", [])
    charts = [
        chart(
            "Throughput",
            [
                ("acknowledged", [(s["t"], s["acked_eps"]) for s in series]),
                ("landed in lake", [(s["t"], s["rows_per_s"]) for s in loader]),
            ],
            y_label="events/s",
        ),
        chart(
            "Acknowledgement latency (by the second answered)",
            [(k, [(s["t"], s[f"{k}_ms"]) for s in series]) for k in ("p50", "p90", "p99", "max")],
            y_label="ms",
            log_y=True,
        ),
        chart(
            "Loader lag",
            [("lag (events)", [(s["t"], s["lag_events"]) for s in loader])],
            y_label="events",
        ),
    ]
    body = "\n".join(f"<div>{c}</div>" for c in charts)
    config = html_lib.escape(json.dumps(result.get("config", {}), indent=1))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>hourglass bench</title>"
        "<style>body{font-family:sans-serif;margin:20px}pre{background:#f6f6f6;padding:8px}"
        "</style></head><body><h1>hourglass bench</h1>"
        f"<p>{html_lib.escape(str(result.get('started', '')))} — "
        f"{html_lib.escape(str(result.get('command', '')))}</p>"
        f"<pre>{html_lib.escape(text)}</pre>{body}<h2>Configuration</h2><pre>{config}</pre>"
        "</body></html>\n"
    )
