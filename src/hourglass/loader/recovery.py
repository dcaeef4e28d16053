"""A stream loader's recovery: from its checkpoint to ready, after any crash.

In order (``StreamLoader`` in ``stream.py`` holds the state, this only reads
and repairs the lake for it):

1. publish what the checkpoint committed but a crash left staged;
2. sweep this loader's own staged files that no checkpoint names (of its epoch
   or earlier: a later owner's are left alone; of a partitioned type, only its
   partition's: ``staging.sweep``);
3. load the dedup index the checkpoint names and drop compaction's staging
   folders (nothing there is the only copy of a row);
4. move past buckets whose manifest (a partition: its record) is there already;
5. catch the index up with the part files committed after its last run.

Each step is safe to repeat: a crash during recovery leaves what the next
recovery handles the same way.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from hourglass import log
from hourglass.lake.layout import SUCCESS, bucket_key, bucket_keys, part_range, record_name
from hourglass.loader import close, compact, lakekeys
from hourglass.loader.staging import publish, sweep, sync_folders
from hourglass.loader.state import Saved, copy_state

if TYPE_CHECKING:
    from hourglass.loader.stream import StreamLoader

logger = log.get("hourglass.loader")


def recover(loader: StreamLoader) -> None:
    started = time.monotonic()
    saved = loader.checkpoints.load()
    loader.state = saved.state
    loader.processed_seq = loader.state.committed_seq
    epoch = loader.checkpoints.epoch
    store = loader.store
    published = publish(store, saved.staged)
    keep = set(saved.staged.values())
    removed = 0
    # On S3 only the buckets this stream writes in are swept: from the
    # checkpoint's first open (or unsealed) one on; a listing of every bucket of
    # the lake's age would cost a LIST each.  (A fenced owner's staged file in an
    # older, closed bucket is left there: no reader reads a staged name.)
    since = None if store.local is not None else _oldest_open(loader)
    for folder in bucket_keys(store, loader.name, since):
        removed += sweep(store, folder, epoch, keep, loader.partition.owns)
        # An earlier version renamed parts before saving (never partitioned).
        if saved.legacy and loader.partition.index is None:
            for entry in store.files(folder):
                span = part_range(entry.name)
                if span and span[0] > loader.state.committed_seq:
                    store.delete(f"{folder}/{entry.name}")
                    removed += 1
    if loader.deduper is not None:
        removed += loader.deduper.restore(saved.dedup, epoch)
    if compact.compacts(loader):
        removed += compact.drop_staging(loader.lake, loader.name, epoch)
    _skip_closed(loader)
    indexed = time.monotonic()
    read = _catch_up(loader, imported=saved.dedup is None) if loader.deduper is not None else 0
    logger.info(
        "recovered",
        extra={
            "stream": loader.name,
            **({} if loader.partition.index is None else {"partition": loader.partition.index}),
            "committed_seq": loader.state.committed_seq,
            "next_close": loader.state.next_close,
            "removed_files": removed,
            "published_files": published,
            "dedup_files_read": read,
            "dedup_keys": loader.deduper.keys if loader.deduper else 0,
            "index_s": round(indexed - started, 2),
            "catch_up_s": round(time.monotonic() - indexed, 2),
            "epoch": epoch,
        },
    )


def _oldest_open(loader: StreamLoader) -> int | None:
    """The first bucket this stream may have written since its checkpoint (None:
    it never closed one, so any)."""
    state = loader.state
    starts = [s for s in (state.next_close, state.unsealed) if s is not None]
    return min(starts) if state.next_close is not None else None


def _skip_closed(loader: StreamLoader) -> None:
    """A crash after a manifest but before the checkpoint: that bucket is closed
    (an earlier version published before it saved)."""
    if not loader.closes:
        return
    skipped = close.skip_closed(loader.state, loader.width, lambda start: _closed(loader, start))
    if skipped:
        if loader.partition.index is not None and loader.state.unsealed is None:
            loader.state.unsealed = skipped[0]
        loader.checkpoints.save(Saved(state=loader.state, dedup=loader.index_state()))


def _closed(loader: StreamLoader, start: int) -> bool:
    """Whether the bucket at ``start`` has this loader's manifest (or record)."""
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    index = loader.partition.index
    own = SUCCESS if index is None else record_name(index)
    return loader.store.exists(f"{bucket_key(loader.name, begin, loader.width)}/{own}")


def _catch_up(loader: StreamLoader, *, imported: bool) -> int:
    """Read into the memtable the keys of part files committed after the index's
    last run (``imported``: a stream with no index yet, e.g. after an upgrade:
    every part file of the window), writing runs as it fills; how many files."""
    deduper = loader.deduper
    assert deduper is not None
    now = loader.clock()
    horizon = now - deduper.window_s - loader.width
    if not imported and loader.state.next_close is not None:
        horizon = min(horizon, loader.state.next_close - loader.width)
    files = lakekeys.committed_after(
        loader.store, loader.name, deduper.state.indexed_seq, horizon, loader.partition.index
    )
    for i, (last, key) in enumerate(files):
        deduper.add(lakekeys.of_file(loader.store, key), now=now)
        # A flush's files share one range: a run ends only where a range does.
        if deduper.due() and (i + 1 == len(files) or files[i + 1][0] != last):
            _commit_index(loader, last, now)
    if imported and files:
        _commit_index(loader, files[-1][0], now)
    return len(files)


def _commit_index(loader: StreamLoader, through_seq: int, now: float) -> None:
    """Write the memtable as a run now (it holds every key up to ``through_seq``)."""
    deduper = loader.deduper
    assert deduper is not None
    plan = deduper.plan(loader.checkpoints.epoch, through_seq, now, force=True)
    sync_folders(loader.store, plan.staged.values())
    loader.checkpoints.save(
        Saved(state=copy_state(loader.state), staged=plan.staged, dedup=plan.state)
    )
    publish(loader.store, plan.staged)
    deduper.apply(plan, now)
