"""Where things live in the lake, and how a file becomes durable there.

Layout (a contract; see docs/lake.md)::

    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/part-<first>-<last>.parquet
    <lake>/<type>/date=YYYY-MM-DD/hour=HH[/minute=MM]/_SUCCESS.json

``<first>-<last>`` is the range of bus (stream) sequence numbers whose events
the file holds: every file of one loader flush carries the same range, so after
a crash the loader can tell committed files (range at or below its checkpoint)
from files of a flush that never committed (above it), and delete the latter.

Durable write, in this order: write ``.tmp-<name>.partial`` → fsync it → rename to
``<name>`` → fsync the directory.  A crash leaves either no file, a ``.tmp-``
file (deleted at start-up), or the complete file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from hourglass.crashpoints import crashpoint

TMP_PREFIX = ".tmp-"
SUCCESS = "_SUCCESS.json"
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """Create missing folders, fsyncing each new entry's parent."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def durable_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(tmp)``, fsync, rename into place, fsync the folder."""
    makedirs_durable(path.parent)
    tmp = path.with_name(TMP_PREFIX + path.name + ".partial")  # no reader globs *.partial
    try:
        write(tmp)
        crashpoint("lake.before_rename")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
        raise
    fsync_dir(path.parent)


def durable_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    durable_write(path, write)
