"""Where the lake's bytes live: a folder on a POSIX file system, or S3.

The loader's commit protocol (``loader/staging.py``: stage, commit, publish)
and the close (``loader/close.py``: records, one manifest) need only the
operations of :class:`Store`, on keys that are POSIX paths relative to the lake
root (``<type>/date=…/hour=…/part-….parquet``).  So one protocol serves both
destinations, and the Parquet writer knows neither (it writes to a file object).

What each operation promises, per store (what a crash leaves is the caller's:
the staging protocol never depends on more than this):

============  =================================  ===================================
operation     :class:`LocalStore`                :class:`S3Store` (``s3.py``)
============  =================================  ===================================
``put``       written in place and fsynced: a    one PUT: the object appears whole
              crash leaves it torn, so only for  or not at all
              names no reader reads (staged)
``create``    a hard link onto the name: fails   PUT with ``If-None-Match: *``: a
              if it exists, so at most one       second is refused (412), so a fenced
              creator wins                       writer cannot overwrite
``rename``    ``os.replace``, the folder fsynced  server-side copy, then delete: a
                                                 crash between leaves both (the copy
                                                 is whole; the source is swept)
``list``      one folder's files                 one LIST page walk of a prefix
============  =================================  ===================================

A PUT to S3 is durable when it returns (the store's own guarantee), so
:meth:`Store.sync` is a no-op there; on a file system it fsyncs the folders a
batch of renames or creations touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from hourglass.config import Settings
from hourglass.durable import create_once, fsync_dir, makedirs_durable

__all__ = [
    "INDEX",
    "Entry",
    "LocalStore",
    "Mirrored",
    "Routed",
    "Store",
    "Writer",
    "lake_store",
    "write_bytes",
]

INDEX = "_dedup"  # <lake>/<type>/_dedup/: the loader's dedup index (loader/dedup.py)

Writer = Callable[[BinaryIO], None]  # writes an object's bytes to the file it is given


def write_bytes(data: bytes) -> Writer:
    """A ``Writer`` of bytes already in memory (a manifest, a filter column)."""

    def write(file: BinaryIO) -> None:
        file.write(data)

    return write


@dataclass(frozen=True)
class Entry:
    """An object of a folder: its name (no folder) and size in bytes."""

    name: str
    size: int


class Store(Protocol):
    """The lake's objects by key (``a/b/c``: a POSIX path under the lake root)."""

    @property
    def url(self) -> str:
        """The lake root, as a user writes it (a path, or ``s3://bucket/prefix``)."""
        ...

    @property
    def local(self) -> Path | None:
        """The root folder, for what only a file system can do (None on S3)."""
        ...

    def where(self, key: str) -> str:
        """``key`` as a user or a reader names it (a path, or an ``s3://`` URL)."""
        ...

    def put(self, key: str, write: Writer) -> int:
        """Write an object (on a file system: in place, fsynced, durable once
        :meth:`sync` ran on its folder; torn by a crash, so only under a name no
        reader reads: ``loader/staging.py``); its size."""
        ...

    def create(self, key: str, data: bytes, temp: str) -> bool:
        """Create ``key`` only if absent: True if this call did.  ``temp``: a key
        beside it for a file system's link source (unused on S3)."""
        ...

    def read(self, key: str) -> bytes:
        """An object's bytes; ``FileNotFoundError`` if there is none."""
        ...

    def open(self, key: str) -> BinaryIO:
        """An object to read, seekable (on S3, downloaded whole first)."""
        ...

    def exists(self, key: str) -> bool: ...

    def files(self, folder: str) -> list[Entry]:
        """The objects directly in ``folder`` (none if it does not exist), by name."""
        ...

    def folders(self, folder: str) -> list[str]:
        """The names of the folders directly in ``folder``, sorted."""
        ...

    def rename(self, src: str, dst: str) -> bool:
        """Move ``src`` onto ``dst`` (replacing it); False if ``src`` is gone."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; one that is gone already is not an error."""
        ...

    def sync(self, folders: Iterable[str]) -> None:
        """Make the renames and creations in ``folders`` durable."""
        ...


class LocalStore:
    """A lake folder on a POSIX file system (hard links required for ``create``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return str(self.root)

    @property
    def local(self) -> Path | None:
        return self.root

    def where(self, key: str) -> str:
        return str(self.root / key)

    def put(self, key: str, write: Writer) -> int:
        path = self.root / key
        makedirs_durable(path.parent)
        with open(path, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
            return file.tell()

    def create(self, key: str, data: bytes, temp: str) -> bool:
        path = self.root / key
        makedirs_durable(path.parent)
        return create_once(path, data, self.root / temp)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return open(self.root / key, "rb")

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def files(self, folder: str) -> list[Entry]:
        # Loaders of other partitions rename and delete in a shared bucket folder
        # while this lists it: a file gone between the listing and its stat was
        # never this caller's to see (its partition's files are its own).
        found = []
        try:
            with os.scandir(self.root / folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_file():
                            found.append(Entry(entry.name, entry.stat().st_size))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return []
        return sorted(found, key=lambda e: e.name)

    def folders(self, folder: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / folder).iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def rename(self, src: str, dst: str) -> bool:
        try:
            os.replace(self.root / src, self.root / dst)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def sync(self, folders: Iterable[str]) -> None:
        for folder in sorted(set(folders)):
            fsync_dir(self.root / folder)


def lake_store(settings: Settings) -> Store:
    """The lake the settings name: a folder, or S3 with the loader's dedup index
    in ``settings.lake_path`` on this machine (:class:`Routed`)."""
    if not settings.lake_remote:
        return LocalStore(settings.lake_path)
    from hourglass.lake.s3 import S3Store  # obstore: the s3 extra's

    rows = S3Store.from_url(settings.lake_url, endpoint=settings.s3_endpoint or None)
    return Routed(rows, Mirrored(LocalStore(settings.lake_path), rows))


class Mirrored:
    """The dedup index of a lake on S3: every write goes to this machine's folder
    (where runs are memory-mapped) and to the lake, so that a loader taking the
    stream over on another machine finds the index the checkpoint names (it
    copies a file the first time it needs it: ``Deduper._local``), and the lake
    stays the only state a loader needs.  Reads are local first; a listing is
    both copies', so a sweep sees what a crash left in either.

    Each write is local (fsynced), then the lake's: a crash between leaves a
    staged file in one place, which no checkpoint names and the next sweep
    deletes; a publish renames the lake's copy first, and a crash before the
    local rename leaves a local staged file whose final the lake has (the next
    recovery's publish renames it, or ``_local`` fetches the final)."""

    def __init__(self, local: LocalStore, remote: Store) -> None:
        self.local_store, self.remote = local, remote

    @property
    def url(self) -> str:
        return self.remote.url

    @property
    def local(self) -> Path | None:
        return self.local_store.root

    def where(self, key: str) -> str:
        return self.remote.where(key)

    def put(self, key: str, write: Writer) -> int:
        size = self.local_store.put(key, write)
        with self.local_store.open(key) as file:
            self.remote.put(key, lambda out: shutil.copyfileobj(file, out))
        return size

    def create(self, key: str, data: bytes, temp: str) -> bool:
        created = self.remote.create(key, data, temp)
        self.local_store.put(key, write_bytes(data))
        return created

    def read(self, key: str) -> bytes:
        try:
            return self.local_store.read(key)
        except FileNotFoundError:
            return self.remote.read(key)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.local_store.open(key)
        except FileNotFoundError:
            return self.remote.open(key)

    def exists(self, key: str) -> bool:
        return self.local_store.exists(key) or self.remote.exists(key)

    def files(self, folder: str) -> list[Entry]:
        found = {e.name: e for e in self.local_store.files(folder)}
        found.update((e.name, e) for e in self.remote.files(folder))
        return sorted(found.values(), key=lambda e: e.name)

    def folders(self, folder: str) -> list[str]:
        return sorted(set(self.local_store.folders(folder)) | set(self.remote.folders(folder)))

    def rename(self, src: str, dst: str) -> bool:
        # The lake's copy first: a staged file another machine wrote is only there.
        moved = self.remote.rename(src, dst)
        return self.local_store.rename(src, dst) or moved

    def delete(self, key: str) -> None:
        self.remote.delete(key)
        self.local_store.delete(key)

    def sync(self, folders: Iterable[str]) -> None:
        self.local_store.sync(folders)


class Routed:
    """A lake on S3 with the loader's dedup index also on a local disk: keys
    ``<type>/_dedup/…`` go to ``index`` (:class:`Mirrored`: memory-mapped run
    files need a file system), the rest to ``rows``."""

    def __init__(self, rows: Store, index: Store) -> None:
        self.rows, self.index = rows, index

    def _of(self, key: str) -> Store:
        return self.index if key.split("/", 2)[1:2] == [INDEX] else self.rows

    @property
    def url(self) -> str:
        return self.rows.url

    @property
    def local(self) -> Path | None:
        return self.rows.local

    def where(self, key: str) -> str:
        return self._of(key).where(key)

    def put(self, key: str, write: Writer) -> int:
        return self._of(key).put(key, write)

    def create(self, key: str, data: bytes, temp: str) -> bool:
        return self._of(key).create(key, data, temp)

    def read(self, key: str) -> bytes:
        return self._of(key).read(key)

    def open(self, key: str) -> BinaryIO:
        return self._of(key).open(key)

    def exists(self, key: str) -> bool:
        return self._of(key).exists(key)

    def files(self, folder: str) -> list[Entry]:
        return self._of(folder + "/").files(folder)

    def folders(self, folder: str) -> list[str]:
        return self._of(folder + "/").folders(folder)

    def rename(self, src: str, dst: str) -> bool:
        return self._of(src).rename(src, dst)

    def delete(self, key: str) -> None:
        self._of(key).delete(key)

    def sync(self, folders: Iterable[str]) -> None:
        folders = list(folders)
        self.index.sync(f for f in folders if self._of(f + "/") is self.index)
        self.rows.sync(f for f in folders if self._of(f + "/") is self.rows)
