"""Where things live in the lake: folder and file names, and the bucket width.

Layout (a contract; see docs/lake.md)::

    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/part-<first>-<last>.parquet
    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/_SUCCESS.json
    <lake>/<type>/_deleted.json     buckets removed by lake retention (retention.py)
    <lake>/<type>/_dedup/           the loader's dedup index (loader/dedup.py): not rows
    <lake>/_compacting/<type>/      compaction's staging folders (loader/compact.py): not rows

``<first>-<last>`` is the range of bus (stream) sequence numbers whose events
the file holds: every file of one loader flush carries the same range, so after
a crash the loader can tell committed files (range at or below its checkpoint)
from files of a flush that never committed (above it), and delete the latter.

Files get there by ``hourglass.durable`` (temp name, fsync, rename, fsync the
folder).  ``lake/_hourglass.json`` records the bucket width, so one lake never
mixes ``hour=`` and ``minute=`` layouts (:func:`check_layout`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec

from hourglass.config import Settings
from hourglass.durable import TMP_PREFIX, durable_write_bytes
from hourglass.exceptions import ConfigError

__all__ = [
    "COMPACTING",
    "SUCCESS",
    "TMP_PREFIX",
    "bucket_dir",
    "bucket_dirs",
    "bucket_of_dir",
    "bucket_start",
    "check_layout",
    "hour_dir",
    "part_name",
    "part_range",
]

SUCCESS = "_SUCCESS.json"
COMPACTING = "_compacting"  # under the lake, beside the types: no type's glob reaches it
_PART = re.compile(r"^part-(\d{20})-(\d{20})\.parquet$")
UTC = dt.UTC


def bucket_start(ts: dt.datetime, width_s: int) -> dt.datetime:
    epoch = int(ts.timestamp())
    return dt.datetime.fromtimestamp(epoch - epoch % width_s, UTC)


def bucket_dir(lake: Path, type_name: str, start: dt.datetime, width_s: int) -> Path:
    path = lake / type_name / f"date={start:%Y-%m-%d}" / f"hour={start:%H}"
    if width_s < 3600:
        path = path / f"minute={start:%M}"
    return path


def hour_dir(lake: Path, type_name: str, start: dt.datetime) -> Path:
    """The folder of the hour that begins at ``start``, whatever the bucket width."""
    return bucket_dir(lake, type_name, start, 3600)


def bucket_of_dir(lake: Path, type_name: str, path: Path) -> dt.datetime:
    """Inverse of :func:`bucket_dir`."""
    parts = dict(p.split("=", 1) for p in path.relative_to(lake / type_name).parts)
    return dt.datetime.strptime(
        f"{parts['date']} {parts['hour']}:{parts.get('minute', '00')}", "%Y-%m-%d %H:%M"
    ).replace(tzinfo=UTC)


def bucket_dirs(lake: Path, type_name: str) -> Iterator[Path]:
    """Every bucket folder of a type, in time order."""
    root = lake / type_name
    if not root.exists():
        return
    pattern = (
        "date=*/hour=*/minute=*" if any(root.glob("date=*/hour=*/minute=*")) else ("date=*/hour=*")
    )
    yield from sorted(p for p in root.glob(pattern) if p.is_dir())


def part_name(first_seq: int, last_seq: int) -> str:
    return f"part-{first_seq:020d}-{last_seq:020d}.parquet"


def part_range(name: str) -> tuple[int, int] | None:
    match = _PART.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_layout(settings: Settings) -> None:
    """One lake, one bucket width: refuse to mix ``hour=`` and ``minute=`` layouts."""
    lake = settings.lake_path
    marker = lake / "_hourglass.json"
    if marker.exists():
        existing = msgspec.json.decode(marker.read_bytes()).get("bucket")
        if existing != settings.bucket:
            raise ConfigError(
                f"the lake {lake} is written with --bucket {existing}; run with the same "
                f"width or use another --data-dir (asked for --bucket {settings.bucket})"
            )
        return
    durable_write_bytes(marker, msgspec.json.encode({"bucket": settings.bucket}))
