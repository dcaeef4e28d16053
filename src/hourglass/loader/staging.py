"""Staged lake files: written under a name no reader sees, visible only once committed.

A loader that lost its stream to another (``bus/ownership.py``) may still be
running: paused, then woken, it finishes the write it was in.  So nothing it
writes may become visible on its own.  Every part file and manifest is:

1. **staged**: written as ``.tmp-e<epoch>-<name>.staged`` in its final folder, fsynced,
   and the folder fsynced (:func:`stage`, :func:`sync_folders`); on S3, one PUT;
2. **committed**: the checkpoint that names it (``Saved.staged``) is saved;
   for the service that is a revision-checked KV write a fenced loader cannot
   make;
3. **published**: renamed to ``<name>``, the folder fsynced (:func:`publish`); on
   S3, a server-side copy, then the staged object deleted.

A crash after 1 leaves a staged file no checkpoint names: the next recovery of
that epoch or a later one deletes it (:func:`sweep`).  A crash after 2 leaves a
committed staged file: the next recovery publishes it first (a rename of a file
that is gone is a rename someone else already made; on S3 a crash between the
copy and the delete leaves a staged object whose final is already there, which
the next publish copies again, the same bytes).  Readers glob
``part-*.parquet`` (or ``*.parquet``) and ``_SUCCESS.json``; a staged name
matches neither.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping

from hourglass.crashpoints import crashpoint
from hourglass.durable import TMP_PREFIX
from hourglass.lake.store import Store, Writer
from hourglass.lake.store import write_bytes as write_bytes  # for stage()'s callers

_STAGED = re.compile(r"^" + re.escape(TMP_PREFIX) + r"e(\d+)-")


# After the name, so that no reader's glob matches a staged file: ``*.parquet``
# matches ``.tmp-…parquet`` in DuckDB (its ``*`` takes a leading dot), and the
# rows of a flush that never commits must never be read.
STAGED_SUFFIX = ".staged"


def staged_key(final: str, epoch: int) -> str:
    """The staged name of the lake key ``final`` (same folder)."""
    folder, name = posixpath.split(final)
    return posixpath.join(folder, f"{TMP_PREFIX}e{epoch}-{name}{STAGED_SUFFIX}")


def final_of(name: str) -> str:
    """The final name of a staged file's name (``.tmp-e<epoch>-<final>.staged``)."""
    rest = name[len(TMP_PREFIX) :].partition("-")[2] if name.startswith(TMP_PREFIX) else name
    return rest.removesuffix(STAGED_SUFFIX)


def epoch_of(name: str) -> int | None:
    """The epoch of a staged file's name; None for any other name."""
    match = _STAGED.match(name)
    return int(match.group(1)) if match else None


def stage(store: Store, final: str, epoch: int, write: Writer) -> tuple[str, int]:
    """Write ``final``'s content under its staged name (on a file system, fsynced;
    the folder is fsynced by :func:`sync_folders` before the commit): the staged
    key and its size.  A failed write (a full disk) leaves nothing behind."""
    temp = staged_key(final, epoch)
    try:
        size = store.put(temp, write)
    except BaseException:
        store.delete(temp)
        raise
    crashpoint("lake.staged")
    return temp, size


def folder_of(key: str) -> str:
    return posixpath.dirname(key)


def sync_folders(store: Store, keys: Iterable[str]) -> None:
    store.sync({folder_of(k) for k in keys})


def publish(store: Store, staged: Mapping[str, str]) -> int:
    """Move each committed staged file into place; how many were still staged.

    A staged file that is gone was published already (by this loader before a
    crash, or by another that rolled the same checkpoint forward); its folder
    may even be gone since (lake retention), so it is not looked for.
    """
    moved = [final for final, temp in sorted(staged.items()) if store.rename(temp, final)]
    sync_folders(store, moved)
    return len(moved)


def sweep(
    store: Store,
    folder: str,
    epoch: int,
    keep: Iterable[str],
    mine: Callable[[str], bool] | None = None,
) -> int:
    """Delete what an interrupted write left in ``folder``: staged files of epochs up
    to ``epoch`` not in ``keep`` (keys: every bucket's staged manifest has the same
    name), and any other temp file; how many.

    Staged files of later epochs are left alone: a later owner may be writing
    them right now (this loader is then fenced, and finds out at its next commit).
    ``mine`` (a final name: is it this loader's?): in a folder that partitions of
    one type share, only this partition's files are looked at; the epochs of
    another partition's are another lease's.
    """
    kept = set(keep)
    removed = 0
    for entry in store.files(folder):
        key = posixpath.join(folder, entry.name)
        if not entry.name.startswith(TMP_PREFIX) or key in kept:
            continue
        if mine is not None and not mine(final_of(entry.name)):
            continue
        stamped = epoch_of(entry.name)
        if stamped is not None and stamped > epoch:
            continue
        store.delete(key)
        removed += 1
    return removed
