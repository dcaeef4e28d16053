"""``hourglass status``: what an operator needs to see first.

Per stream: events stored on the bus, how far the loader has committed, its lag,
the oldest open bucket and how long ago it should have closed; and which
gateways hold a live lease.  Read-only: safe to run against a live system.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from nats.js import JetStreamContext

from hourglass.bus import jetstream
from hourglass.bus.embedded import resolve_bus_url
from hourglass.bus.errors import BusNotFound, map_nats_errors
from hourglass.bus.marks import read_leases
from hourglass.config import Settings, bucket_seconds
from hourglass.lake.failed import FAILED_DIR
from hourglass.loader.state import load_state
from hourglass.schemas import load_registry


async def gather_status(settings: Settings) -> str:
    registry = load_registry(settings)
    width = bucket_seconds(settings.bucket)
    nc = await asyncio.wait_for(
        jetstream.connect(resolve_bus_url(settings), name="hourglass-status"), 10
    )
    lines: list[str] = []
    try:
        js = nc.jetstream(timeout=5)
        lines.append(
            f"{'stream':<28} {'bus msgs':>9} {'committed':>9} {'lag':>7} "
            f"{'oldest open bucket':<22} {'overdue':>8}"
        )
        names = [(s.type_name, jetstream.stream_name(s.type_name)) for s in registry]
        names.append((FAILED_DIR, jetstream.FAILED_STREAM))
        now = time.time()
        for name, stream in names:
            try:
                with map_nats_errors(f"stream info {stream}"):
                    info = await js.stream_info(stream)
                last_seq = int(info.state.last_seq)
            except BusNotFound:
                lines.append(f"{name:<28} (no stream yet)")
                continue
            state = load_state(settings.checkpoint_path(name))
            lag = last_seq - state.committed_seq
            open_at = "-"
            overdue = ""
            if state.next_close is not None and name != FAILED_DIR:
                start = dt.datetime.fromtimestamp(state.next_close, dt.UTC)
                open_at = start.strftime("%Y-%m-%d %H:%M")
                late = now - (state.next_close + width)
                overdue = f"{late:.0f}s" if late > 0 else "no"
            lines.append(
                f"{name:<28} {last_seq:>9} {state.committed_seq:>9} {lag:>7} "
                f"{open_at:<22} {overdue:>8}"
            )
        lines.append("")
        lines.extend(await _leases(js, now))
    finally:
        await nc.close()
    return "\n".join(lines)


async def _leases(js: JetStreamContext, now: float) -> list[str]:
    leases = await read_leases(js)
    if not leases:
        return ["gateways: none live"]
    out = [f"gateways: {len(leases)} live"]
    for key, marker in sorted(leases.items()):
        behind = now - marker.watermark / 1_000_000
        out.append(f"  {key}  watermark {behind:.1f}s behind now")
    return out
