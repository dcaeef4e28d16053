"""Lake retention: whole closed buckets older than ``lake_retention_days`` are deleted,
and each deletion is recorded so ``hourglass audit`` tells it from a loss.

The record is ``<lake>/<type>/_deleted.json`` (a list of :class:`Deletion`),
rewritten whole (temp, fsync, rename, fsync folder) *before* the folder is
removed.  A crash between the two leaves a recorded bucket whose folder is still
there, perhaps half removed: the next round removes the rest, and the audit
skips a recorded bucket whatever is left of it.  A record is kept for
``keep_records_s`` after the deletion: the caller passes the bus's replay window
and more, since every published tally of the bucket was stored before its
deletion and leaves the bus within the replay window.  So the file stays small.

Only buckets before the loader's ``next_close`` go: every bucket before it is
closed.  ``_failed`` has no manifests; its buckets go by age alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import msgspec

from hourglass import log
from hourglass.durable import durable_write_bytes, fsync_dir
from hourglass.lake.layout import bucket_dirs, bucket_of_dir

logger = log.get("hourglass.lake")

DELETED = "_deleted.json"
DAY = 86400


class Deletion(msgspec.Struct):
    bucket_start: int  # epoch s
    deleted_at: float


def read_deletions(lake: Path, type_name: str) -> dict[int, Deletion]:
    path = lake / type_name / DELETED
    if not path.exists():
        return {}
    return {d.bucket_start: d for d in msgspec.json.decode(path.read_bytes(), type=list[Deletion])}


def expire_buckets(
    lake: Path,
    type_name: str,
    width: int,
    *,
    days: int,
    closed_before: int | None,
    keep_records_s: float,
    now: float | None = None,
) -> list[int]:
    """Delete the buckets of ``type_name`` that ended ``days`` ago or earlier and
    start before ``closed_before`` (None: any, for ``_failed``); their starts."""
    now = time.time() if now is None else now
    cutoff = now - days * DAY
    doomed = []
    for folder in bucket_dirs(lake, type_name):
        start = int(bucket_of_dir(lake, type_name, folder).timestamp())
        if start + width > cutoff:
            break  # in time order: the rest are younger
        if closed_before is not None and start >= closed_before:
            break
        doomed.append((start, folder))
    deletions = read_deletions(lake, type_name)
    going = {s for s, _ in doomed}
    kept = {
        s: d for s, d in deletions.items() if d.deleted_at >= now - keep_records_s or s in going
    }
    fresh = [s for s in sorted(going) if s not in kept]
    if fresh or len(kept) != len(deletions):
        kept.update({s: Deletion(s, now) for s in fresh})
        body = msgspec.json.encode(sorted(kept.values(), key=lambda d: d.bucket_start))
        durable_write_bytes(lake / type_name / DELETED, body)
    for start, folder in doomed:
        shutil.rmtree(folder)
        _remove_empty_parents(folder.parent, lake / type_name)
        logger.info(
            "bucket deleted by lake retention",
            extra={"type": type_name, "bucket_start": start, "days": days},
        )
    return [s for s, _ in doomed]


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
    fsync_dir(folder)
