"""Files that survive a crash: the one way Hourglass writes state to disk.

Used by every stage that keeps state on disk (the lake's parts and manifests,
the loader's checkpoints and quarantine, the tailer's checkpoints, the spool's
folder entries), so it sits below all of them.

Durable write, in this order: write ``.tmp-<name>.partial`` → fsync it → rename
to ``<name>`` → fsync the directory.  A crash leaves either no file, a ``.tmp-``
file (whoever owns the folder deletes those at start-up), or the complete file;
never a torn one under the final name.  A write that fails (a full disk) removes
its temp file before the error goes on.  New folders are fsynced into their
parents as they are made, so a file's path survives with it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

from hourglass.crashpoints import crashpoint

__all__ = [
    "TMP_PREFIX",
    "ExchangeUnsupported",
    "create_once",
    "durable_write",
    "durable_write_bytes",
    "exchange",
    "fsync_dir",
    "fsync_file",
    "makedirs_durable",
]

TMP_PREFIX = ".tmp-"


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (creations, renames, deletions) durable."""
    _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    _fsync_path(path, os.O_RDONLY)


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
        crashpoint("lake.before_rename")  # the name the crash tests use, for any file
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
        raise
    fsync_dir(path.parent)


def durable_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    durable_write(path, write)


def create_once(path: Path, data: bytes, temp: Path) -> bool:
    """Create ``path`` with ``data`` unless it exists: whether this call created it.

    For a file several writers may race to create, all with equivalent content
    (the first one stays): written whole under ``temp`` (the caller's name, so
    its own clean-up finds it after a crash), fsynced, then hard-linked to
    ``path``, which fails if ``path`` exists; the folder is fsynced.  Never a
    torn file under ``path``, never one replaced.
    """
    makedirs_durable(path.parent)
    try:
        temp.write_bytes(data)
        fsync_file(temp)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        return True
    finally:
        temp.unlink(missing_ok=True)
        fsync_dir(path.parent)


class ExchangeUnsupported(OSError):
    """This system or file system cannot swap two paths atomically."""


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths (folders, say) in one atomic step: Linux's
    ``renameat2(RENAME_EXCHANGE)``.  A reader sees one or the other, never neither;
    a crash leaves them swapped or not.  Make it durable with :func:`fsync_dir` on
    both parents.  Raises :class:`ExchangeUnsupported` where there is no such call
    (not Linux, an old libc, a file system without it) or the paths are on two
    file systems."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError) as exc:
        raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available") from exc
    result = call(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )
    if result != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP):
            raise ExchangeUnsupported(code, f"cannot swap {a} and {b}: {os.strerror(code)}")
        raise OSError(code, os.strerror(code), str(a), None, str(b))
