"""Where things live in the lake: folder and file names, and the bucket width.

Layout (a contract; see docs/lake.md)::

    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/part-<first>-<last>.parquet
    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/_SUCCESS.json
    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/_partition-<p>.json
    <lake>/<type>/_partitions.json  a partitioned type's count and first bucket
    <lake>/<type>/_deleted.json     buckets removed by lake retention (retention.py)
    <lake>/<type>/_dedup/           the loader's dedup index (loader/dedup.py): not rows
    <lake>/_compacting/<type>/      compaction's staging folders (loader/compact.py): not rows

``<first>-<last>`` is the range of bus (stream) sequence numbers whose events
the file holds: every file of one loader flush carries the same range, so after
a crash the loader can tell committed files (range at or below its checkpoint)
from files of a flush that never committed (above it), and delete the latter.

A type with P > 1 partitions (a stream each, ``bus/jetstream.py``) shares its
bucket folders among them: its part files are ``part-p<p>-<first>-<last>``
(sequences are per partition stream), each partition closes a bucket with its
own ``_partition-<p>.json``, and ``_SUCCESS.json`` is written once, when every
partition has (``loader/close.py``).  A loader touches only its partition's
files: :func:`partition_of_name` tells whose a name is.

Files get there by ``hourglass.durable`` (temp name, fsync, rename, fsync the
folder).  ``lake/_hourglass.json`` records the bucket width, so one lake never
mixes ``hour=`` and ``minute=`` layouts (:func:`check_layout`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hourglass.config import Settings
from hourglass.durable import TMP_PREFIX, durable_write_bytes
from hourglass.exceptions import ConfigError
from hourglass.lake.store import Store

__all__ = [
    "COMPACTING",
    "ONLY",
    "PARTITIONS",
    "Partition",
    "SUCCESS",
    "TMP_PREFIX",
    "bucket_dir",
    "bucket_dirs",
    "bucket_key",
    "bucket_keys",
    "bucket_of_dir",
    "bucket_of_key",
    "bucket_start",
    "check_layout",
    "hour_dir",
    "part_name",
    "part_partition",
    "part_range",
    "partition_of_name",
    "record_name",
]

SUCCESS = "_SUCCESS.json"
COMPACTING = "_compacting"  # under the lake, beside the types: no type's glob reaches it
PARTITIONS = "_partitions.json"  # <lake>/<type>/: a partitioned type's count, first bucket
_PART = re.compile(r"^part-(?:p(\d+)-)?(\d{20})-(\d{20})\.parquet$")
# What partition p owns in a shared bucket folder: its part files, its close
# record (and the temp name it writes the bucket's manifest under, ``close.py``).
_OWNED = re.compile(
    r"^(?:part-p(\d+)-\d{20}-\d{20}\.parquet|_partition-(\d+)\.json(?:\.success)?)$"
)
UTC = dt.UTC
MARKER = "_hourglass.json"  # <lake>/_hourglass.json: the bucket width


@dataclass(frozen=True)
class Partition:
    """Which partition of its type a loader loads: ``index`` None for a type of one
    partition, whose files carry no partition in their names."""

    index: int | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if (self.index is None) != (self.count == 1) or not 0 <= (self.index or 0) < self.count:
            raise ValueError(f"partition {self.index} of {self.count}")

    def owns(self, name: str) -> bool:
        """Whether a file of this final name in a bucket folder is this partition's."""
        return self.index is None or partition_of_name(name) == self.index


ONLY = Partition()


def bucket_start(ts: dt.datetime, width_s: int) -> dt.datetime:
    epoch = int(ts.timestamp())
    return dt.datetime.fromtimestamp(epoch - epoch % width_s, UTC)


def bucket_key(type_name: str, start: dt.datetime, width_s: int) -> str:
    """The bucket folder at ``start``, as a key under the lake root."""
    key = f"{type_name}/date={start:%Y-%m-%d}/hour={start:%H}"
    return key + f"/minute={start:%M}" if width_s < 3600 else key


def bucket_dir(lake: Path, type_name: str, start: dt.datetime, width_s: int) -> Path:
    return lake / bucket_key(type_name, start, width_s)


def hour_dir(lake: Path, type_name: str, start: dt.datetime) -> Path:
    """The folder of the hour that begins at ``start``, whatever the bucket width."""
    return bucket_dir(lake, type_name, start, 3600)


def bucket_of_key(type_name: str, key: str) -> dt.datetime:
    """Inverse of :func:`bucket_key`."""
    parts = dict(p.split("=", 1) for p in key.removeprefix(type_name + "/").split("/"))
    return dt.datetime.strptime(
        f"{parts['date']} {parts['hour']}:{parts.get('minute', '00')}", "%Y-%m-%d %H:%M"
    ).replace(tzinfo=UTC)


def bucket_of_dir(lake: Path, type_name: str, path: Path) -> dt.datetime:
    """Inverse of :func:`bucket_dir`."""
    return bucket_of_key(type_name, path.relative_to(lake).as_posix())


def bucket_dirs(lake: Path, type_name: str) -> Iterator[Path]:
    """Every bucket folder of a type, in time order."""
    root = lake / type_name
    if not root.exists():
        return
    pattern = (
        "date=*/hour=*/minute=*" if any(root.glob("date=*/hour=*/minute=*")) else ("date=*/hour=*")
    )
    yield from sorted(p for p in root.glob(pattern) if p.is_dir())


def bucket_keys(store: Store, type_name: str, since: int | None = None) -> list[str]:
    """Every bucket folder of a type, in time order, as keys: those starting at or
    after ``since`` (epoch s), if given.  One listing a folder, so on S3 a LIST per
    date and per hour looked at: ``since`` keeps a recovery's cost to the buckets
    it may have written, not the lake's age."""
    floor = dt.datetime.fromtimestamp(since, UTC) if since is not None else None
    day = f"date={floor:%Y-%m-%d}" if floor else ""
    hours: list[str] = []
    minutes: list[str] = []
    for date in store.folders(type_name):
        if not date.startswith("date=") or date < day:
            continue
        for hour in store.folders(f"{type_name}/{date}"):
            if not hour.startswith("hour=") or (
                floor and date == day and hour < f"hour={floor:%H}"
            ):
                continue
            key = f"{type_name}/{date}/{hour}"
            hours.append(key)
            minutes += [f"{key}/{m}" for m in store.folders(key) if m.startswith("minute=")]
    found = minutes or hours  # one lake, one width (:func:`check_layout`)
    if floor is None:
        return found
    return [k for k in found if bucket_of_key(type_name, k) >= floor]


def part_name(first_seq: int, last_seq: int, partition: int | None = None) -> str:
    """``partition`` None: a type of one partition (the names of every earlier version)."""
    tag = "" if partition is None else f"p{partition}-"
    return f"part-{tag}{first_seq:020d}-{last_seq:020d}.parquet"


def part_range(name: str) -> tuple[int, int] | None:
    match = _PART.match(name)
    return (int(match.group(2)), int(match.group(3))) if match else None


def part_partition(name: str) -> int | None:
    """The partition of a part file's name; None for one of a 1-partition type
    (or a name that is not a part file's)."""
    match = _PART.match(name)
    return int(match.group(1)) if match and match.group(1) is not None else None


def record_name(partition: int) -> str:
    """The file partition ``partition`` closes a bucket with (``loader/close.py``)."""
    return f"_partition-{partition}.json"


def partition_of_name(name: str) -> int | None:
    """Which partition a final file name in a bucket folder belongs to (part files,
    close records); None for any other (``_SUCCESS.json``, a 1-partition part)."""
    match = _OWNED.match(name)
    if match is None:
        return None
    return int(match.group(1) if match.group(1) is not None else match.group(2))


def check_layout(settings: Settings, store: Store) -> None:
    """One lake, one bucket width: refuse to mix ``hour=`` and ``minute=`` layouts."""
    try:
        existing = msgspec.json.decode(store.read(MARKER)).get("bucket")
    except FileNotFoundError:
        data = msgspec.json.encode({"bucket": settings.bucket})
        if store.local is not None:  # a file system may lack hard links: a rename
            durable_write_bytes(store.local / MARKER, data)
            return
        if store.create(MARKER, data, f"{TMP_PREFIX}{MARKER}.{os.getpid()}"):
            return
        existing = msgspec.json.decode(store.read(MARKER)).get("bucket")
    if existing != settings.bucket:
        raise ConfigError(
            f"the lake {store.url} is written with --bucket {existing}; run with the same "
            f"width or use another lake (asked for --bucket {settings.bucket})"
        )
