"""``hourglass status``: what an operator needs to see first.

Per stream: events stored on the bus, how far the loader has committed, its lag,
the oldest open bucket and how long ago it should have closed; the stream's
budget (``bus/retention.py``): bytes not yet in the lake, bytes kept for
replay and how far back they go, the inflow over one second and how long the
budget lasts at it if the loader stopped; which gateways hold a live lease;
the dedup index of each type: the window it holds (shorter than configured
once its budget is full), its keys and bytes on disk; and which loaders are
live, which own streams and which stand by.
Read-only: safe to run against a live system.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from nats.js import JetStreamContext

from hourglass.bus import jetstream
from hourglass.bus.embedded import resolve_bus_url
from hourglass.bus.errors import BusNotFound
from hourglass.bus.marks import read_leases
from hourglass.bus.ownership import read_loaders
from hourglass.bus.retention import Usage, message_time, usage
from hourglass.config import Settings, bucket_seconds
from hourglass.lake.failed import FAILED_DIR
from hourglass.loader.owner import read_saved
from hourglass.loader.state import LoaderState, Saved
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
        counts = jetstream.partition_counts(settings, registry.type_names)
        # A stream per type, or per partition of a partitioned one (``<type>/<p>``).
        names = [
            (t if p is None else f"{t}/{p}", jetstream.stream_name(t, p))
            for t, n in counts.items()
            for p in jetstream.partitions(n)
        ]
        names.append((FAILED_DIR, jetstream.FAILED_STREAM))
        # The file checkpoint an earlier version kept (none for a partition).
        legacy = {
            name: settings.checkpoint_path(stream if "/" in name else name)
            for name, stream in names
        }
        # One read of every stream now, one RATE_SAMPLE_S later (the inflow);
        # the checkpoints once, after the first.
        before, started = await _usages(js, names), time.monotonic()
        saveds = {
            name: await read_saved(js, stream, legacy[name])
            for name, stream in names
            if name in before
        }
        states = {name: saved.state for name, saved in saveds.items()}
        now = time.time()
        for name, _ in names:
            u = before.get(name)
            if u is None:
                lines.append(f"{name:<28} (no stream yet)")
                continue
            state = states[name]
            lag = u.last_seq - state.committed_seq
            open_at = "-"
            overdue = ""
            if state.next_close is not None and name != FAILED_DIR:
                start = dt.datetime.fromtimestamp(state.next_close, dt.UTC)
                open_at = start.strftime("%Y-%m-%d %H:%M")
                late = now - (state.next_close + width)
                overdue = f"{late:.0f}s" if late > 0 else "no"
            lines.append(
                f"{name:<28} {u.last_seq:>9} {state.committed_seq:>9} {lag:>7} "
                f"{open_at:<22} {overdue:>8}"
            )
        lines.append("")
        await asyncio.sleep(max(0.0, RATE_SAMPLE_S - (time.monotonic() - started)))
        after, took = await _usages(js, names), time.monotonic() - started
        lines.extend(await _budgets(js, before, after, took, states))
        lines.append("")
        lines.extend(_dedup(saveds, settings, time.time()))
        lines.append("")
        lines.extend(_compaction(states, width))
        lines.append("")
        lines.extend(await _leases(js, now))
        lines.append("")
        lines.extend(await _loaders(js, [stream for _, stream in names]))
    finally:
        await nc.close()
    return "\n".join(lines)


RATE_SAMPLE_S = 1.0


async def _usages(js: JetStreamContext, names: list[tuple[str, str]]) -> dict[str, Usage]:
    out = {}
    for name, stream in names:
        try:
            out[name] = await usage(js, stream)
        except BusNotFound:
            continue
    return out


async def _budgets(
    js: JetStreamContext,
    before: dict[str, Usage],
    after: dict[str, Usage],
    took: float,
    states: dict[str, LoaderState],
) -> list[str]:
    """The budget table, from two reads of every stream ``took`` seconds apart."""
    lines = [
        f"{'stream':<28} {'budget':>9} {'unconsumed':>10} {'replay':>9} {'oldest msg':>10} "
        f"{'inflow/s':>9} {'budget lasts':>12}"
    ]
    for name, u in after.items():
        state = states.get(name)
        committed = state.committed_seq if state is not None else 0
        unconsumed = u.unconsumed_bytes(committed)
        first = before.get(name, u)
        if first.first_seq == u.first_seq:  # nothing purged between the reads
            inflow = max(0, u.bytes - first.bytes) / took
        else:
            inflow = max(0, u.last_seq - first.last_seq) * u.mean_message / took
        oldest = await message_time(js, u.stream, ">", u.first_seq) if u.messages else None
        age = _duration(time.time() - oldest) if oldest is not None else "-"
        room = u.budget - unconsumed if u.budget > 0 else None
        lasts = "-" if room is None or inflow <= 0 else _duration(room / inflow)
        lines.append(
            f"{name:<28} {_size(u.budget):>9} {_size(unconsumed):>10} "
            f"{_size(u.replay_bytes(committed)):>9} {age:>10} {_size(inflow):>9} {lasts:>12}"
        )
    return lines


def _dedup(saveds: dict[str, Saved], settings: Settings, now: float) -> list[str]:
    """Each type's dedup index (``loader/dedup.py``) as its last checkpoint names it:
    the window it holds against the configured one, keys and run bytes.  Keys since
    the last run are in the loader's memory only, and not counted here."""
    lines = [f"{'dedup index':<28} {'window':>9} {'of':>6} {'keys':>13} {'runs':>10}  note"]
    for name, saved in saveds.items():
        index = saved.dedup
        if name == FAILED_DIR:
            continue
        window_s = settings.dedup_window_of(name.split("/")[0])
        if index is None:
            lines.append(f"{name:<28} (no run written yet)")
            continue
        held = index.effective_window_s(window_s, now)
        note = "SHORT: the index budget is full (docs/lake.md)" if held < window_s else ""
        lines.append(
            f"{name:<28} {_duration(held):>9} {_duration(window_s):>6} {index.keys:>13,} "
            f"{_size(index.disk_bytes):>10}  {note}"
        )
    return lines


def _compaction(states: dict[str, LoaderState], width: int) -> list[str]:
    """Closed buckets whose part files are not merged yet (``loader/compact.py``), as
    of each stream's last checkpoint: 0 or 1 normally; a growing number means
    compaction cannot keep up (``hourglass_loader_compaction_backlog_buckets``)."""
    lines = ["compaction (closed buckets not yet merged, at the last checkpoint)"]
    for name, state in states.items():
        if name == FAILED_DIR or state.next_close is None:
            continue
        if state.unsealed is not None:  # a partition: closed, waiting for the others
            waiting = (state.next_close - state.unsealed) // width
            lines.append(f"  {name:<28} {waiting} closed, waiting for other partitions")
        if "/" in name and not name.endswith("/0"):
            continue  # a partitioned type's buckets are compacted by partition 0's loader
        if state.compacted_before is None:
            lines.append(f"  {name:<28} not started")
            continue
        waiting = max(0, (state.next_close - state.compacted_before) // width)
        lines.append(f"  {name:<28} {waiting} waiting")
    return lines


def _size(n: float) -> str:
    if n < 0:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


async def _loaders(js: JetStreamContext, streams: list[str]) -> list[str]:
    """Each stream's owner, and the loaders standing by (``bus/ownership.py``)."""
    owners, members = await read_loaders(js)
    if not members and not owners:
        return ["loaders: none live"]
    out = [f"loaders: {len(members)} live"]
    for member in sorted(members, key=lambda m: m.loader):
        role = f"owns {len(member.owns)} of {len(streams)} streams" if member.owns else "standby"
        out.append(f"  {member.loader}  ({member.host} pid {member.pid})  {role}")
    unowned = [s for s in streams if s not in owners]
    if unowned:
        out.append(f"  not loaded by anyone: {', '.join(unowned)}")
    return out


async def _leases(js: JetStreamContext, now: float) -> list[str]:
    leases = await read_leases(js)
    if not leases:
        return ["gateways: none live"]
    out = [f"gateways: {len(leases)} live"]
    for key, marker in sorted(leases.items()):
        behind = now - marker.watermark / 1_000_000
        out.append(f"  {key}  watermark {behind:.1f}s behind now")
    return out
