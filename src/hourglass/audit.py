"""``hourglass audit``: prove that what the gateways stored is in the lake, exactly once.

Two independent records are compared, per type and closed bucket:

* **published** — every bus message a gateway stores carries an ``Hg-Tally``
  header (events per receive minute), written in the same fsync'd publish as the
  events and before any of them is acknowledged.  The audit reads only headers
  (a headers-only consumer), never the loader's state.
* **delivered** — rows in the lake's Parquet files whose ``received_at`` falls in
  the bucket, wherever they are stored (a skewed event lives in a later bucket's
  folder but still counts for its own), plus the duplicates the loader dropped.

``missing = published - delivered - duplicates``; anything above zero is a loss.
Every closed bucket is also checked against its manifest: a file deleted, added
or altered (row count, sha256) after close is named, and a closed bucket with
published events but no folder at all is reported.  Buckets whose bus messages
have left the stream are checked for integrity only; buckets deleted by lake
retention (``lake/retention.py``'s record) are skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from nats.js import JetStreamContext

from hourglass import log
from hourglass.bus import jetstream
from hourglass.bus.consumer import tally_by_minute
from hourglass.bus.embedded import resolve_bus_url
from hourglass.config import Settings, bucket_seconds
from hourglass.exceptions import BusUnavailable
from hourglass.lake.dataset import part_keys, type_dataset
from hourglass.lake.layout import SUCCESS, bucket_keys, bucket_of_key, part_range
from hourglass.lake.manifest import Manifest, sha256_of_file
from hourglass.lake.retention import read_deletions
from hourglass.lake.store import Store, lake_store
from hourglass.loader.owner import read_checkpoint
from hourglass.schemas import load_registry

logger = log.get("hourglass.audit")

UNAVAILABLE_WAIT_S = 30.0  # how long the audit waits out a bus that answers "unavailable"


@dataclass
class BucketAudit:
    type: str
    start: dt.datetime
    published: int | None  # None: its messages have left the bus (retention)
    delivered: int
    duplicates: int
    skewed: int
    problems: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        if self.published is None:
            return 0
        return max(0, self.published - self.delivered - self.duplicates)

    @property
    def unexplained(self) -> int:
        """Delivered beyond what was published: rows no gateway stored (or a bad tally)."""
        if self.published is None:
            return 0
        return max(0, self.delivered + self.duplicates - self.published)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexplained and not self.problems


async def published_by_minute(
    js: JetStreamContext,
    type_name: str,
    partition: int | None = None,
    *,
    wait_s: float = UNAVAILABLE_WAIT_S,
) -> tuple[dict[int, int], int]:
    """Events per receive minute from the stream's tally headers; and its first seq.

    A cluster's stream answers "JetStream unavailable" for a few seconds while it
    elects a leader (a node restarted, a network blip): the read, which is
    idempotent (an ephemeral consumer acknowledging nothing), starts again, with a
    backoff, for up to ``wait_s`` before the audit gives up with that error."""
    stream = jetstream.stream_name(type_name, partition)
    deadline = time.monotonic() + wait_s
    delay = 0.25
    while True:
        try:
            return await tally_by_minute(js, stream, jetstream.subject(type_name, partition))
        except BusUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s; reading it again in %.2fs", exc, delay, extra={"stream": stream})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)


async def published_by_bucket(
    js: JetStreamContext, type_name: str, partitions: int, width: int
) -> tuple[dict[int, int], int]:
    """Events per bucket from the tallies of every partition's stream, and the
    bucket from which all are counted (0: all of them): messages before a
    stream's first were removed by retention, and the buckets they fed cannot be
    counted from the bus any more."""
    published: dict[int, int] = {}
    horizon = 0
    for partition in jetstream.partitions(partitions):
        minutes, first_seq = await published_by_minute(js, type_name, partition)
        counts: dict[int, int] = {}
        for minute, n in minutes.items():
            bucket = minute * 60 - (minute * 60) % width
            counts[bucket] = counts.get(bucket, 0) + n
        if first_seq > 1:
            horizon = max(horizon, min(counts, default=0) + width)
        for bucket, n in counts.items():
            published[bucket] = published.get(bucket, 0) + n
    return published, horizon


_COUNT = "select (floor(epoch(received_at))::bigint // $w) * $w as b, count(*) from rows group by b"
_UNREADABLE = (duckdb.Error, pa.ArrowException, OSError)


def _count(settings: Settings, store: Store, type_name: str, keys: list[str], width: int) -> Any:
    rows = type_dataset(settings, store, type_name, keys)
    with duckdb.connect() as con:
        con.register("rows", rows)
        return con.execute(_COUNT, {"w": width}).fetchall()


def delivered_by_bucket(
    settings: Settings, store: Store, type_name: str, width: int
) -> tuple[dict[int, int], list[str]]:
    """Rows per bucket of ``received_at`` across every part file; and unreadable files."""
    keys = part_keys(store, type_name)
    counts: dict[int, int] = {}
    unreadable: list[str] = []
    if not keys:
        return counts, unreadable
    try:
        rows = _count(settings, store, type_name, keys, width)
    except _UNREADABLE:
        rows = []
        for key in keys:  # find the damaged ones, count the rest
            try:
                rows += _count(settings, store, type_name, [key], width)
            except _UNREADABLE:
                unreadable.append(key)
    for bucket, n in rows:
        counts[int(bucket)] = counts.get(int(bucket), 0) + int(n)
    return counts, unreadable


def integrity(store: Store, folder: str, manifest: Manifest) -> list[str]:
    """Differences between a closed bucket's folder and its manifest."""
    problems = []
    present = {e.name for e in store.files(folder) if part_range(e.name) is not None}
    listed = {f.name: f for f in manifest.files}
    for name in sorted(listed.keys() - present):
        problems.append(f"file {name} deleted after close")
    for name in sorted(present - listed.keys()):
        problems.append(f"file {name} added after close")
    for name in sorted(listed.keys() & present):
        entry = listed[name]
        with store.open(posixpath.join(folder, name)) as file:
            if sha256_of_file(file) != entry.sha256:
                problems.append(f"file {name} altered after close (sha256 differs)")
                continue
            file.seek(0)
            rows = pq.ParquetFile(file).metadata.num_rows
        if rows != entry.rows:
            problems.append(f"file {name} has {rows} rows, manifest says {entry.rows}")
    if sum(f.rows for f in manifest.files) != manifest.count:
        problems.append("manifest count differs from the sum of its files")
    return problems


def _manifest_at(store: Store, folder: str) -> Manifest | None:
    try:
        return msgspec.json.decode(store.read(f"{folder}/{SUCCESS}"), type=Manifest)
    except FileNotFoundError:
        return None


async def run_audit(
    settings: Settings, *, type_name: str | None = None, since: dt.datetime | None = None
) -> list[BucketAudit]:
    width = bucket_seconds(settings.bucket)
    store = lake_store(settings)
    types = [s.type_name for s in load_registry(settings)]
    counts = jetstream.partition_counts(settings, types)
    if type_name is not None:
        types = [t for t in types if t == type_name]
    nc = await jetstream.connect(resolve_bus_url(settings), name="hourglass-audit")
    results: list[BucketAudit] = []
    try:
        js = nc.jetstream(timeout=10)
        for name in types:
            published, horizon = await published_by_bucket(js, name, counts[name], width)
            delivered, unreadable = delivered_by_bucket(settings, store, name, width)
            # Lake retention (a lake on a file system only) records what it deleted.
            deleted = {} if settings.lake_remote else read_deletions(settings.lake_path, name)
            seen: set[int] = set()
            for folder in bucket_keys(store, name):
                start = bucket_of_key(name, folder)
                key = int(start.timestamp())
                seen.add(key)
                manifest = _manifest_at(store, folder)
                if manifest is None or key in deleted or (since is not None and start < since):
                    continue
                results.append(
                    BucketAudit(
                        name,
                        start,
                        published.get(key, 0) if key >= horizon else None,
                        delivered.get(key, 0),
                        manifest.duplicates_dropped,
                        manifest.skewed,
                        integrity(store, folder, manifest),
                    )
                )
            closed_before = await _closed_before(js, settings, name, counts[name])
            for key in sorted(published.keys() - seen - deleted.keys()):
                start = dt.datetime.fromtimestamp(key, dt.UTC)
                gone = BucketAudit(
                    name, start, published[key], delivered.get(key, 0), 0, 0, ["no bucket folder"]
                )
                # Closed with events of its own missing (skewed ones live elsewhere).
                if key < closed_before and key >= horizon and gone.missing:
                    if since is None or start >= since:
                        results.append(gone)
    finally:
        await nc.close()
    return results


async def _closed_before(
    js: JetStreamContext, settings: Settings, name: str, partitions: int
) -> int:
    """The type's first bucket not closed by all its partitions (0: none closed)."""
    closed: list[int] = []
    for partition in jetstream.partitions(partitions):
        stream = jetstream.stream_name(name, partition)
        legacy = settings.checkpoint_path(name if partition is None else stream)
        state = await read_checkpoint(js, stream, legacy)
        closed.append(min(state.next_close or 0, state.unsealed or state.next_close or 0))
    return min(closed)


def render(results: list[BucketAudit]) -> str:
    lines = [
        f"{'type':<24} {'bucket':<17} {'published':>9} {'delivered':>9} {'dups':>6} "
        f"{'skewed':>6} {'missing':>7}  status"
    ]
    for r in results:
        published = "retention" if r.published is None else str(r.published)
        status = (
            "ok"
            if r.ok
            else "; ".join(([f"{r.missing} missing"] if r.missing else []) + r.problems)
        )
        lines.append(
            f"{r.type:<24} {r.start:%Y-%m-%d %H:%M} {published:>9} {r.delivered:>9} "
            f"{r.duplicates:>6} {r.skewed:>6} {r.missing:>7}  {status}"
        )
    bad = [r for r in results if not r.ok]
    lines.append(f"{len(results)} closed buckets audited, {len(bad)} with problems")
    return "\n".join(lines)
