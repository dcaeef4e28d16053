"""Closing buckets: when a bucket is complete, and how its manifest is written.

This is the subtlest rule in the system, so it lives apart, in functions of
what they are given.  A bucket ``[start, end)`` of a stream is **complete** when
no event with ``received_at < end`` can still arrive:

* every live gateway has a *committed* watermark marker ``>= end`` (a marker
  promises that every event the gateway stamped before it is earlier in the
  stream, ``bus/marks.py``), or
* no gateway is alive, the bus was drained after ``end``, and everything
  processed is committed;

and both facts were learnt after ``end``: a loader paused across the end must
not close it on a view of the leases, or of the bus, from before.  Buckets
close in order, from the checkpoint's ``next_close``, never one before the
previous.  Rows that arrive later for a closed bucket are skew: the loader puts
them in the oldest open bucket and counts them there.

Closing stages ``_SUCCESS.json``, saves the checkpoint with ``next_close``
moved past it and the manifest named in it, then renames the manifest into
place (``staging.py``).  A crash before the save leaves a staged manifest that
recovery deletes, and the bucket is closed again; after it, a manifest that
recovery publishes.  A manifest the checkpoint does not know (written by an
earlier version, which saved after renaming) is seen and kept
(:func:`skip_closed`).

**A partitioned type** (P > 1 streams sharing its bucket folders, ``lake/
layout.py``) closes a bucket once *every* partition has, by its own markers:

1. partition ``p`` closes it as above, with its record ``_partition-<p>.json``
   (a manifest of its own files) instead of ``_SUCCESS.json``; its checkpoint's
   ``unsealed`` is the first bucket it closed that has no manifest yet;
2. :func:`seal`, at that close and at every later round, from ``unsealed`` on:
   if ``_SUCCESS.json`` is there (or lake retention deleted the bucket), the
   bucket is done and ``unsealed`` moves past it; else if every partition's
   record is there, the manifest made from them is created once
   (``Store.create``: a hard link that fails if the file exists, or on S3 a
   PUT with ``If-None-Match: *``).

So whichever partition closes last writes the manifest, and if it dies first,
the next owner of any partition still waiting writes it: records are published
only after the checkpoint that commits them, so the manifest made from them is
the same whoever makes it (a fenced loader too), and only the first stays.
Partitions agree on the first bucket they close (``_partitions.json`` of the
type, :func:`agree_first`), or one would wait forever for a record another
never writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from hourglass import log
from hourglass.crashpoints import crashpoint
from hourglass.exceptions import ConfigError
from hourglass.lake.layout import (
    ONLY,
    PARTITIONS,
    SUCCESS,
    Partition,
    bucket_key,
    record_name,
)
from hourglass.lake.manifest import FileEntry, Manifest, files_of, manifest_bytes
from hourglass.lake.store import Store
from hourglass.loader.staging import (
    publish,
    stage,
    staged_key,
    sweep,
    sync_folders,
    write_bytes,
)
from hourglass.loader.state import (
    BucketCounts,
    Checkpoints,
    DedupState,
    LoaderState,
    Saved,
    copy_state,
)

logger = log.get("hourglass.loader")


@dataclass(frozen=True)
class Facts:
    """What the loader knows of the world, and since when."""

    live: set[str] | None  # gateways with a live lease; None: the leases are unknown
    live_as_of: float  # when the set of live gateways was read
    drained_as_of: float | None  # when the bus was known to hold nothing more; None: not


def complete(end: int, facts: Facts, markers: dict[str, int], *, all_committed: bool) -> bool:
    """Whether the bucket ending at ``end`` (epoch s) can be closed.

    ``markers`` are the committed watermarks (µs) per gateway; ``all_committed``
    says everything processed is in the checkpoint.
    """
    if facts.live is None or facts.live_as_of < end:
        return False  # which gateways live is known only from before the end
    end_us = end * 1_000_000
    if facts.live:
        return all(markers.get(g, -1) >= end_us for g in facts.live)
    # No gateway is alive: nothing more can arrive once the bus is drained.
    return facts.drained_as_of is not None and facts.drained_as_of >= end and all_committed


def due(
    state: LoaderState,
    facts: Facts,
    now: float,
    width: int,
    *,
    has_pending: bool,
    all_committed: bool,
) -> tuple[int | None, list[int]]:
    """The stream's first open bucket, and the starts of the buckets to close now, in order.

    A stream that has never closed (``next_close`` None) starts at the current
    bucket once it is drained with nothing pending; that start is returned for
    the caller to keep, and saved with the first close.
    """
    first = state.next_close
    if facts.live is None:
        return first, []
    if first is None:
        if facts.drained_as_of is None or has_pending:
            return first, []
        first = int(now) - int(now) % width
    starts = []
    start = first
    while start + width <= now and complete(
        start + width, facts, state.markers, all_committed=all_committed
    ):
        starts.append(start)
        start += width
    return first, starts


MARKER_KEEP_S = 3600  # a gateway gone this long no longer has its marker kept


def prune_markers(state: LoaderState, live: set[str], now: float) -> int:
    """Forget the markers of gateways that are not live and marked nothing for
    ``MARKER_KEEP_S``: without it the checkpoint keeps one entry per gateway
    that ever ran (a new id every start).  Safe: a bucket waits only for live
    gateways, and one that comes back waits for its next marker.  Returns how
    many were dropped (the next checkpoint save makes it durable)."""
    horizon_us = (now - MARKER_KEEP_S) * 1_000_000
    gone = [g for g, w in state.markers.items() if g not in live and w < horizon_us]
    for gateway in gone:
        del state.markers[gateway]
    return len(gone)


def close_bucket(
    store: Store,
    name: str,
    width: int,
    state: LoaderState,
    checkpoints: Checkpoints,
    now: float,
    dedup: DedupState | None = None,
    partition: Partition = ONLY,
) -> tuple[Manifest, LoaderState]:
    """Close the bucket at ``state.next_close``: its manifest staged, the checkpoint
    that moves past it saved, the manifest published (``staging.py``).  For a
    partition of a partitioned type the manifest is its record, and the bucket
    waits in ``unsealed`` (the module docstring); the caller seals it.

    Returns the manifest (the one found, if the bucket has one already) and the
    checkpoint now saved; ``state`` itself is not changed, so a failed write
    leaves the caller's checkpoint as it was and the close is simply tried again.
    ``dedup``: the stream's dedup index as it stands, saved along unchanged.
    Rows still pending for the bucket came after every live gateway's marker:
    they are late, and the next flush moves them to an open bucket.
    """
    assert state.next_close is not None
    start, end = state.next_close, state.next_close + width
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    folder = bucket_key(name, begin, width)
    counts = state.buckets.get(start, BucketCounts())
    staged: dict[str, str] = {}
    target = f"{folder}/{SUCCESS if partition.index is None else record_name(partition.index)}"
    if not store.exists(target):
        # What owners fenced since this one's recovery staged here.
        sweep(store, folder, checkpoints.epoch - 1, keep=[], mine=partition.owns)
        files = files_of(store, folder, partition.index)
        manifest = _manifest(name, start, width, now, files, counts.duplicates, counts.skewed)
        manifest.partitions, manifest.partition = partition.count, partition.index
        temp, _ = stage(store, target, checkpoints.epoch, write_bytes(manifest_bytes(manifest)))
        sync_folders(store, [temp])
        staged[target] = temp
        crashpoint("loader.after_manifest")
    else:
        manifest = msgspec.json.decode(store.read(target), type=Manifest)
    closed = copy_state(state)
    closed.buckets.pop(start, None)
    closed.next_close = end
    if partition.index is not None and closed.unsealed is None:
        closed.unsealed = start
    checkpoints.save(Saved(state=closed, staged=staged, dedup=dedup))
    crashpoint("loader.after_close_checkpoint")
    publish(store, staged)
    if staged:
        logger.info(
            "bucket closed" if partition.index is None else "bucket closed by a partition",
            extra={
                "type": name,
                "bucket": begin.isoformat(),
                "count": manifest.count,
                "delay_s": manifest.close_delay_s,
                **({} if partition.index is None else {"partition": partition.index}),
            },
        )
    return manifest, closed


def seal(
    store: Store, name: str, width: int, partition: Partition, start: int, epoch: int, now: float
) -> bool:
    """Whether a partitioned type's bucket is done: it has its manifest now
    (written here if every partition's record is there), or lake retention
    deleted it.  False: a partition has not closed it yet.  Safe to call from
    any partition, any number of times, at once."""
    assert partition.index is not None
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    folder = bucket_key(name, begin, width)
    present = {entry.name for entry in store.files(folder)}
    if SUCCESS in present:
        return True
    if not present:
        # This partition's record was staged in it when it closed the bucket, so
        # the folder is gone only if lake retention deleted it (sealed, and
        # expired while this partition was away).
        return True
    records = []
    for p in range(partition.count):
        if record_name(p) not in present:
            return False
        records.append(msgspec.json.decode(store.read(f"{folder}/{record_name(p)}"), type=Manifest))
    files = sorted((f for r in records for f in r.files), key=lambda f: f.name)
    duplicates = sum(r.duplicates_dropped for r in records)
    manifest = _manifest(name, start, width, now, files, duplicates, sum(r.skewed for r in records))
    manifest.partitions = partition.count
    temp = staged_key(f"{folder}/{record_name(partition.index)}.success", epoch)
    crashpoint("loader.before_seal")
    if store.create(f"{folder}/{SUCCESS}", manifest_bytes(manifest), temp):
        logger.info(
            "bucket closed",
            extra={
                "type": name,
                "bucket": begin.isoformat(),
                "count": manifest.count,
                "delay_s": manifest.close_delay_s,
                "partitions": partition.count,
                "sealed_by": partition.index,
            },
        )
    return True


def _manifest(
    name: str,
    start: int,
    width: int,
    now: float,
    files: list[FileEntry],
    duplicates: int,
    skewed: int,
) -> Manifest:
    """The manifest of the bucket at ``start`` holding ``files``, closed ``now``
    (a bucket's, or a partition's record of it)."""
    end = start + width
    return Manifest(
        type=name,
        bucket_start=dt.datetime.fromtimestamp(start, dt.UTC),
        bucket_end=dt.datetime.fromtimestamp(end, dt.UTC),
        closed_at=dt.datetime.fromtimestamp(now, dt.UTC),
        count=sum(f.rows for f in files),
        files=files,
        duplicates_dropped=duplicates,
        skewed=skewed,
        close_delay_s=round(now - end, 3),
    )


class Partitions(msgspec.Struct):
    """``<lake>/<type>/_partitions.json``: written once, by the first partition to
    start closing."""

    partitions: int
    first_bucket: int


def agree_first(store: Store, name: str, partition: Partition, candidate: int, epoch: int) -> int:
    """The first bucket every partition of a partitioned type closes: ``candidate``
    (this partition's) if it is the first to ask, else the one already agreed.
    Refuses a lake written with another number of partitions."""
    key = f"{name}/{PARTITIONS}"
    if not store.exists(key):
        data = msgspec.json.encode(Partitions(partition.count, candidate))
        store.create(key, data, staged_key(f"{name}/{PARTITIONS}.p{partition.index}", epoch))
    agreed = check_partitions(store, name, partition.count)
    assert agreed is not None
    return agreed.first_bucket


def check_partitions(store: Store, name: str, count: int) -> Partitions | None:
    """What the lake says of a type's partitions (None: it was never partitioned);
    a different ``count`` is refused."""
    try:
        agreed = msgspec.json.decode(store.read(f"{name}/{PARTITIONS}"), type=Partitions)
    except FileNotFoundError:
        return None
    if agreed.partitions != count:
        raise ConfigError(
            f"the lake's {name} is written with {agreed.partitions} partitions, not "
            f"{count}: the partitions of an existing type cannot change (docs/deploy.md)"
        )
    return agreed


def skip_closed(state: LoaderState, width: int, has_manifest: Callable[[int], bool]) -> list[int]:
    """Move ``next_close`` past buckets that already have a manifest (a crash after
    the manifest, before the checkpoint); the starts it moved past, for the caller
    to save."""
    moved = []
    while state.next_close is not None and has_manifest(state.next_close):
        moved.append(state.next_close)
        state.buckets.pop(state.next_close, None)
        state.next_close += width
    return moved
