"""The dashboard's watcher: every type's recent buckets, from the bus and the lake.

Like ``hourglass audit`` it compares two independent records, per type and
bucket: **published**, from the ``Hg-Tally`` headers the gateways write with the
events (read once each, in steps: :func:`~hourglass.bus.consumer.read_tallies`),
and **delivered**, from the lake — a closed bucket's manifest (close delay,
duplicates, skew) and the ``received_at`` column of its files, read once when
the manifest appears.  It reads the loaders' checkpoints for what is still open,
and never writes anything: it is a separate process so that a dead or stuck
loader is seen (Burrow watches Kafka consumers from outside for the same reason).

Bounded: per type the ``dashboard_buckets`` newest buckets (older ones are
forgotten), the ingest minutes of the last hour, and per stream the tallies of
messages after the loader's checkpoint (at most ``BACKLOG_MAX`` entries; past it
the newest absorbs the rest, so a huge backlog is counted, coarsely).
No state is saved: a restart reads the kept window again.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
from nats.js import JetStreamContext

from hourglass import log
from hourglass.bus import jetstream
from hourglass.bus.consumer import read_tallies
from hourglass.bus.errors import BusNotFound
from hourglass.bus.marks import Lease, read_leases
from hourglass.bus.retention import message_time, usage
from hourglass.config import Settings, bucket_seconds
from hourglass.lake.layout import SUCCESS, bucket_key, bucket_keys, bucket_of_key
from hourglass.lake.manifest import Manifest
from hourglass.lake.store import Store
from hourglass.loader.owner import read_saved
from hourglass.monitor.snapshot import Cell, Minute, Snapshot, TypeRow, per_bucket, quantile

logger = log.get("hourglass.monitor")

BACKLOG_MAX = 1_000_000  # per stream: messages after the checkpoint counted one by one
READ_LIMIT = 200_000  # messages' headers read per stream and refresh
MINUTES = 60  # the ingest history kept, in minutes
ABSENT_RECHECK_S = 30.0  # a closed bucket with no manifest (none yet, or empty) is looked for again


@dataclass
class Partition:
    """One stream of a type, as the watcher follows it."""

    stream: str
    subject: str
    legacy: str
    next_seq: int = 1
    backlog: list[tuple[int, int]] = field(default_factory=list)  # (seq, events) unloaded
    committed: int = 0
    next_close: int | None = None
    unsealed: int | None = None
    last_seq: int = 0
    budget: int = 0
    unconsumed: float = 0.0
    lag_s: float = 0.0
    dedup_window_s: float | None = None


@dataclass
class TypeWatch:
    name: str
    parts: list[Partition]
    published: dict[int, int] = field(default_factory=dict)  # bucket start -> events
    delivered: dict[int, int] = field(default_factory=dict)  # bucket of received_at -> rows
    manifests: dict[int, Manifest] = field(default_factory=dict)
    absent: dict[int, float] = field(default_factory=dict)  # closed, no manifest: when looked
    horizon: int = 0  # buckets before it are not all on the bus any more
    listed: bool = False

    @property
    def closed_before(self) -> int:
        """The first bucket not closed by every partition (0: none closed yet)."""
        return min(min(p.next_close or 0, p.unsealed or p.next_close or 0) for p in self.parts)


class Watcher:
    """Reads the bus and the lake on :meth:`refresh`; :meth:`snapshot` is what it saw."""

    def __init__(self, settings: Settings, type_names: list[str], store: Store) -> None:
        self.settings = settings
        self.store = store
        self.width = bucket_seconds(settings.bucket)
        self.keep = settings.dashboard_buckets
        counts = jetstream.partition_counts(settings, type_names)
        self.types = {
            name: TypeWatch(
                name,
                [
                    Partition(
                        jetstream.stream_name(name, p),
                        jetstream.subject(name, p),
                        str(
                            settings.checkpoint_path(
                                name if p is None else jetstream.stream_name(name, p)
                            )
                        ),
                    )
                    for p in jetstream.partitions(n)
                ],
            )
            for name, n in counts.items()
        }
        self.minutes: dict[int, int] = {}
        self.answers: dict[int, list[int]] = {}  # minute -> latency counts (non-cumulative)
        self.bounds: list[float] = []
        self._leases: dict[str, Lease] = {}
        self.gateways = 0
        self.refreshed = 0.0
        self.took = 0.0
        self.errors: list[str] = []
        self.closed_now: list[tuple[str, Manifest]] = []  # since the last refresh began
        self.absent_recheck_s = ABSENT_RECHECK_S

    # -- reading -----------------------------------------------------------

    async def refresh(self, js: JetStreamContext, now: float | None = None) -> None:
        started = time.monotonic()
        now = time.time() if now is None else now
        errors: list[str] = []
        self.closed_now = []
        floor = self._floor(now)
        for watch in self.types.values():
            for part in watch.parts:
                try:
                    await self._read_stream(js, watch, part, now)
                except BusNotFound:
                    continue  # no stream yet: the gateway creates it
            self._read_lake(watch, floor, errors)
            self._forget(watch, floor)
        await self._read_leases(js, now)
        cutoff = int(now // 60) - MINUTES
        for minutes in (self.minutes, self.answers):
            for minute in [m for m in minutes if m <= cutoff]:
                del minutes[minute]
        self.errors = errors
        self.refreshed = now
        self.took = time.monotonic() - started

    def _floor(self, now: float) -> int:
        current = int(now) - int(now) % self.width
        return current - (self.keep - 1) * self.width

    async def _read_stream(
        self, js: JetStreamContext, watch: TypeWatch, part: Partition, now: float
    ) -> None:
        u = await usage(js, part.stream)
        part.last_seq, part.budget = u.last_seq, u.budget
        # Messages gone before they were read (retention, or a watcher started
        # late): the bucket of the oldest one left may lack some of its events.
        gap = part.next_seq < u.first_seq
        part.next_seq = max(part.next_seq, u.first_seq)
        if u.messages and part.next_seq <= u.last_seq:
            tallies = await read_tallies(
                js, part.stream, part.subject, part.next_seq, limit=READ_LIMIT
            )
            if gap and tallies.minutes:
                first = self._bucket_of_minute(min(tallies.minutes))
                watch.horizon = max(watch.horizon, first + self.width)
            part.next_seq = tallies.next_seq
            for minute, n in tallies.minutes.items():
                bucket = self._bucket_of_minute(minute)
                watch.published[bucket] = watch.published.get(bucket, 0) + n
                self.minutes[minute] = self.minutes.get(minute, 0) + n
            part.backlog.extend(tallies.messages)
            if len(part.backlog) > BACKLOG_MAX:
                extra = part.backlog[BACKLOG_MAX - 1 :]
                part.backlog[BACKLOG_MAX - 1 :] = [(extra[-1][0], sum(n for _, n in extra))]
        saved = await read_saved(js, part.stream, Path(part.legacy))
        state = saved.state
        part.committed, part.next_close, part.unsealed = (
            state.committed_seq,
            state.next_close,
            state.unsealed,
        )
        drop = 0
        while drop < len(part.backlog) and part.backlog[drop][0] <= part.committed:
            drop += 1
        del part.backlog[:drop]
        part.unconsumed = u.unconsumed_bytes(part.committed)
        part.lag_s = 0.0
        if part.last_seq > part.committed:
            stored = await message_time(js, part.stream, part.subject, part.committed + 1)
            part.lag_s = max(0.0, now - stored) if stored is not None else 0.0
        window = self.settings.dedup_window_of(watch.name)
        part.dedup_window_s = (
            saved.dedup.effective_window_s(window, now) if saved.dedup is not None else None
        )

    def _bucket_of_minute(self, minute: int) -> int:
        return minute * 60 - (minute * 60) % self.width

    def _read_lake(self, watch: TypeWatch, floor: int, errors: list[str]) -> None:
        """New manifests of the kept window: at the first refresh those of every
        folder listed, after it those of buckets the checkpoints say are closed."""
        first = not watch.listed
        if first:
            starts = [
                int(bucket_of_key(watch.name, k).timestamp())
                for k in bucket_keys(self.store, watch.name, since=floor)
            ]
            watch.listed = True
        else:  # the buckets closed since, and a closed one without a manifest yet
            closed = watch.closed_before
            starts = list(range(max(floor, closed - 2 * self.width), closed, self.width))
        for start in starts:
            if start in watch.manifests or start < floor:
                continue
            looked = watch.absent.get(start)
            if looked is not None and time.monotonic() - looked < self.absent_recheck_s:
                continue
            manifest = self.manifest(watch.name, start)
            if manifest is None:
                watch.absent[start] = time.monotonic()
                continue
            try:
                self._count_rows(watch, start, manifest)
            except (OSError, FileNotFoundError) as exc:  # compacted meanwhile: next time
                errors.append(f"{watch.name} {start}: {exc}")
                continue
            watch.manifests[start] = manifest
            if not first:  # closed since the watcher started: an observation for the SLOs
                self.closed_now.append((watch.name, manifest))

    def manifest(self, type_name: str, start: int) -> Manifest | None:
        key = bucket_key(type_name, dt.datetime.fromtimestamp(start, dt.UTC), self.width)
        try:
            return msgspec.json.decode(self.store.read(f"{key}/{SUCCESS}"), type=Manifest)
        except FileNotFoundError:
            return None

    def _count_rows(self, watch: TypeWatch, start: int, manifest: Manifest) -> None:
        """Rows of the bucket's files by the bucket of their ``received_at``: a
        skewed row counts for the bucket it was received in, as in the audit."""
        key = bucket_key(watch.name, dt.datetime.fromtimestamp(start, dt.UTC), self.width)
        counts: dict[int, int] = {}
        for entry in manifest.files:
            with self.store.open(posixpath.join(key, entry.name)) as file:
                column = pq.read_table(file, columns=["received_at"]).column(0)
            seconds = column.to_numpy().astype("datetime64[s]").astype(np.int64)
            buckets, n = np.unique(seconds - seconds % self.width, return_counts=True)
            for b, c in zip(buckets.tolist(), n.tolist(), strict=True):
                counts[b] = counts.get(b, 0) + c
        for b, c in counts.items():
            watch.delivered[b] = watch.delivered.get(b, 0) + c

    def _forget(self, watch: TypeWatch, floor: int) -> None:
        for table in (watch.published, watch.delivered, watch.manifests, watch.absent):
            for start in [s for s in table if s < floor]:
                del table[start]

    async def _read_leases(self, js: JetStreamContext, now: float) -> None:
        """Each gateway's answers since the last read, into this minute's histogram."""
        leases = await read_leases(js)
        self.gateways = len(leases)
        minute = int(now // 60)
        for key, lease in leases.items():
            before = self._leases.get(key)
            if not lease.latency_counts:
                continue
            if not self.bounds:
                self.bounds = list(lease.latency_le)
            if lease.latency_le != self.bounds:
                continue
            if before is not None and len(before.latency_counts) == len(lease.latency_counts):
                now_by = per_bucket(lease.latency_counts)
                then_by = per_bucket(before.latency_counts)
                delta = [a - b for a, b in zip(now_by, then_by, strict=True)]
                if min(delta, default=0) >= 0:  # a restarted gateway starts from zero
                    row = self.answers.setdefault(minute, [0] * len(delta))
                    for i, d in enumerate(delta):
                        row[i] += d
        self._leases = dict(leases)

    # -- what it saw -------------------------------------------------------

    def cells(self, watch: TypeWatch, now: float, target: int) -> list[Cell]:
        closed_before = watch.closed_before
        current = int(now) - int(now) % self.width
        first_open = closed_before or min(watch.published, default=current)
        out = []
        for start in range(self._floor(now), current + self.width, self.width):
            published = watch.published.get(start, 0) if start >= watch.horizon else None
            delivered = watch.delivered.get(start, 0)
            m = watch.manifests.get(start)
            if m is not None:
                missing = (published or 0) - delivered - m.duplicates_dropped
                if published is not None and missing != 0:
                    state = "incomplete"
                elif m.close_delay_s > target:
                    state = "late"
                elif m.skewed:
                    state = "skewed"
                else:
                    state = "ontime"
                out.append(
                    Cell(
                        start,
                        state,
                        published,
                        delivered,
                        m.duplicates_dropped,
                        m.skewed,
                        m.count,
                        m.close_delay_s,
                    )
                )
                continue
            if start < closed_before:
                state = "incomplete" if published else "empty"
            elif start < first_open:
                state = "empty"
            elif now > start + self.width + target:
                state = "overdue"
            else:
                state = "open"
            out.append(Cell(start, state, published, delivered, 0, 0, 0, None))
        return out

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        rows = []
        for name, watch in sorted(self.types.items()):
            t = self.settings.type_settings(name)
            target = self.settings.tier_targets_s[t.tier]
            cells = self.cells(watch, now, target)
            overdue = [c for c in cells if c.state == "overdue"]
            oldest = min((c.start for c in overdue), default=None)
            windows = [p.dedup_window_s for p in watch.parts if p.dedup_window_s is not None]
            rows.append(
                TypeRow(
                    type=name,
                    owner=t.owner,
                    tier=t.tier,
                    target_s=target,
                    enabled=t.enabled,
                    partitions=len(watch.parts),
                    lag_events=sum(n for p in watch.parts for _, n in p.backlog),
                    lag_s=max(p.lag_s for p in watch.parts),
                    overdue_s=0.0 if oldest is None else now - (oldest + self.width + target),
                    overdue=len(overdue),
                    budget_bytes=sum(max(0, p.budget) for p in watch.parts),
                    unconsumed_bytes=sum(p.unconsumed for p in watch.parts),
                    dedup_window_s=min(windows) if windows else None,
                    dedup_configured_s=self.settings.dedup_window_of(name),
                    cells=cells,
                )
            )
        return Snapshot(
            now=now,
            bucket=self.settings.bucket,
            width_s=self.width,
            buckets=self.keep,
            types=rows,
            minutes=self._minutes(now),
            gateways=self.gateways,
            refresh_s=self.took,
            errors=self.errors,
        )

    def _minutes(self, now: float) -> list[Minute]:
        last = int(now // 60)
        out = []
        for minute in range(last - MINUTES + 1, last + 1):
            counts = self.answers.get(minute)
            requests = sum(counts) if counts else 0
            out.append(
                Minute(
                    minute,
                    self.minutes.get(minute, 0),
                    requests,
                    quantile(self.bounds, counts, 0.5),
                    quantile(self.bounds, counts, 0.99),
                )
            )
        return out
