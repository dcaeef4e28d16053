"""Staged lake files: written under a name no reader sees, visible only once committed.

A loader that lost its stream to another (``bus/ownership.py``) may still be
running: paused, then woken, it finishes the write it was in.  So nothing it
writes may become visible on its own.  Every part file and manifest is:

1. **staged**: written as ``.tmp-e<epoch>-<name>.staged`` in its final folder, fsynced,
   and the folder fsynced (:func:`stage`, :func:`sync_folders`);
2. **committed**: the checkpoint that names it (``Saved.staged``) is saved;
   for the service that is a revision-checked KV write a fenced loader cannot
   make;
3. **published**: renamed to ``<name>``, the folder fsynced (:func:`publish`).

A crash after 1 leaves a staged file no checkpoint names: the next recovery of
that epoch or a later one deletes it (:func:`sweep`).  A crash after 2 leaves a
committed staged file: the next recovery publishes it first (a rename of a file
that is gone is a rename someone else already made).  Readers glob
``part-*.parquet`` (or ``*.parquet``) and ``_SUCCESS.json``; a staged name
matches neither.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from hourglass.crashpoints import crashpoint
from hourglass.durable import TMP_PREFIX, fsync_dir, fsync_file, makedirs_durable

_STAGED = re.compile(r"^" + re.escape(TMP_PREFIX) + r"e(\d+)-")


# After the name, so that no reader's glob matches a staged file: ``*.parquet``
# matches ``.tmp-…parquet`` in DuckDB (its ``*`` takes a leading dot), and the
# rows of a flush that never commits must never be read.
STAGED_SUFFIX = ".staged"


def staged_path(final: Path, epoch: int) -> Path:
    return final.with_name(f"{TMP_PREFIX}e{epoch}-{final.name}{STAGED_SUFFIX}")


def final_of(name: str) -> str:
    """The final name of a staged file's name (``.tmp-e<epoch>-<final>.staged``)."""
    rest = name[len(TMP_PREFIX) :].partition("-")[2] if name.startswith(TMP_PREFIX) else name
    return rest.removesuffix(STAGED_SUFFIX)


def epoch_of(name: str) -> int | None:
    """The epoch of a staged file's name; None for any other name."""
    match = _STAGED.match(name)
    return int(match.group(1)) if match else None


def stage(final: Path, epoch: int, write: Callable[[Path], None]) -> Path:
    """Write ``final``'s content under its staged name and fsync it; the folder is
    fsynced by :func:`sync_folders` before the commit.  A failed write (a full
    disk) leaves nothing behind."""
    makedirs_durable(final.parent)
    path = staged_path(final, epoch)
    try:
        write(path)
        fsync_file(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    crashpoint("lake.staged")
    return path


def write_bytes(data: bytes, path: Path) -> None:
    """A ``write`` for :func:`stage` of bytes already in memory (a manifest, a column)."""
    path.write_bytes(data)


def sync_folders(paths: Iterable[Path]) -> None:
    for folder in sorted({p.parent for p in paths}):
        fsync_dir(folder)


def publish(lake: Path, staged: Mapping[str, str]) -> int:
    """Rename each committed staged file into place; how many were still staged.

    A staged file that is gone was published already (by this loader before a
    crash, or by another that rolled the same checkpoint forward); its folder
    may even be gone since (lake retention), so it is not looked for.
    """
    moved: list[Path] = []
    for final, temp in sorted(staged.items()):
        try:
            os.replace(lake / temp, lake / final)
        except FileNotFoundError:
            continue
        moved.append(lake / final)
    sync_folders(moved)
    return len(moved)


def sweep(
    folder: Path, epoch: int, keep: Iterable[Path], mine: Callable[[str], bool] | None = None
) -> int:
    """Delete what an interrupted write left in ``folder``: staged files of epochs up
    to ``epoch`` not in ``keep`` (paths: every bucket's staged manifest has the same
    name), and any other temp file; how many.

    Staged files of later epochs are left alone: a later owner may be writing
    them right now (this loader is then fenced, and finds out at its next commit).
    ``mine`` (a final name: is it this loader's?): in a folder that partitions of
    one type share, only this partition's files are looked at; the epochs of
    another partition's are another lease's.
    """
    kept = set(keep)
    removed = 0
    for path in folder.iterdir():
        if not path.name.startswith(TMP_PREFIX) or path in kept:
            continue
        if mine is not None and not mine(final_of(path.name)):
            continue
        stamped = epoch_of(path.name)
        if stamped is not None and stamped > epoch:
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed
