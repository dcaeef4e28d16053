"""``hourglass status --watch``: the dashboard's facts in a terminal, refreshed in place.

For a server with no browser: the same :class:`~hourglass.monitor.watch.Watcher`
as the page, in this process (read-only, as ``hourglass status``), drawn with
rich — one line per type, its newest buckets as symbols that read without
colour (the page's legend).  Not a terminal (a pipe, a log): one plain frame
per refresh, appended.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hourglass.bus import jetstream
from hourglass.bus.embedded import resolve_bus_url
from hourglass.config import Settings
from hourglass.lake.store import lake_store
from hourglass.monitor.snapshot import Snapshot
from hourglass.monitor.watch import Watcher
from hourglass.schemas import load_registry

SYMBOLS = {
    "open": ("·", "grey50"),
    "overdue": ("!", "bold dark_orange"),
    "ontime": ("✓", "green"),
    "late": ("L", "bold orange_red1"),
    "incomplete": ("✗", "bold red"),
    "skewed": ("S", "medium_purple"),
    "empty": (" ", ""),
}
LEGEND = "  ".join(f"{sym or '␣'} {state}" for state, (sym, _) in SYMBOLS.items())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(snapshot: Snapshot, width: int = 120) -> Group:
    """One frame: a summary line, then a row per type with as many of its newest
    buckets as fit in ``width`` columns."""
    now = dt.datetime.fromtimestamp(snapshot.now, dt.UTC)
    full = snapshot.minutes[-2] if len(snapshot.minutes) > 1 else None
    rate = full.events / 60 if full is not None else 0.0
    answered = [m for m in snapshot.minutes if m.p99_ms is not None]
    latency = (
        f"ack p50 {answered[-1].p50_ms:.1f} ms, p99 {answered[-1].p99_ms:.1f} ms"
        if answered and answered[-1].p50_ms is not None and answered[-1].p99_ms is not None
        else "ack latency: none reported yet"
    )
    head = Text(
        f"Hourglass  {now:%Y-%m-%d %H:%M:%S} UTC  {len(snapshot.types)} types, buckets of "
        f"{snapshot.bucket}  {snapshot.gateways} gateway(s)  "
        f"{rate:.1f} events/s (last full minute)  {latency}"
    )
    fixed = 62
    fit = max(4, min(snapshot.buckets, width - fixed))
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False)
    for column, justify in (
        ("type", "left"),
        ("owner", "left"),
        ("tier", "right"),
        ("lag", "right"),
        ("budget", "right"),
        ("dedup", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column(f"last {fit} buckets, newest right", no_wrap=True)
    for row in snapshot.types:
        cells = Text()
        for cell in row.cells[-fit:]:
            sym, style = SYMBOLS.get(cell.state, ("?", ""))
            cells.append(sym, style=style)
        used = f"{100 * row.unconsumed_bytes / row.budget_bytes:.1f}%" if row.budget_bytes else "-"
        dedup = "-"
        if row.dedup_window_s is not None:
            short = "SHORT " if row.dedup_window_s < row.dedup_configured_s else ""
            dedup = f"{short}{_duration(row.dedup_window_s)}"
        name = row.type if row.enabled else f"{row.type} (disabled)"
        table.add_row(
            name[:28],
            (row.owner or "-")[:12],
            str(row.tier),
            f"{row.lag_events} / {_duration(row.lag_s)}",
            used,
            dedup,
            cells,
        )
    parts: list[Text | Table] = [head, table, Text(LEGEND, style="grey50")]
    parts += [Text(error, style="red") for error in snapshot.errors]
    return Group(*parts)


async def watch(settings: Settings, every: float, *, console: Console | None = None) -> None:
    """Refresh every ``every`` seconds until SIGINT or SIGTERM."""
    console = console or Console()
    watcher = Watcher(settings, load_registry(settings).type_names, lake_store(settings))
    nc = await asyncio.wait_for(
        jetstream.connect(resolve_bus_url(settings), name="hourglass-status"), 10
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        js = nc.jetstream(timeout=10)
        if not console.is_terminal:
            while not stop.is_set():
                await watcher.refresh(js)
                console.print(render(watcher.snapshot(), console.width))
                console.file.flush()
                await _sleep(stop, every)
            return
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while not stop.is_set():
                await watcher.refresh(js)
                live.update(render(watcher.snapshot(), console.width), refresh=True)
                await _sleep(stop, every)
    finally:
        await nc.close()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
