"""Following files durably: the reading half of ``hourglass tail`` (see ``tail.py``).

Durable state: one checkpoint per path, ``<state-dir>/<sha256(path)[:16]>.json``
(dev+inode, generation, offset, line number, and the 32 bytes before the offset: a
fingerprint that notices a truncate-and-refill already past the offset), written
with ``durable_write_bytes`` (``.tmp-`` file, fsync, rename, fsync the folder).  A
:class:`Follower` reads complete lines after the offset (a partial last line
waits) and moves the checkpoint past them only on :meth:`Follower.commit`, once
the gateway answered for every one.

A new generation is checkpointed before any of its lines is read out.  A crash
before a commit's rename leaves the previous checkpoint, perhaps with a stale
``.tmp-`` file that the next write replaces: the lines after it are read again.
A crash between rename and folder fsync leaves the old or the new checkpoint;
either is correct.

Recovery, per path: the checkpoint's file is at the path (same dev+inode): resume at
the offset, unless the file shrank below it or the fingerprint differs (then the next
generation, from 0).  Else, if it is in the same folder under another name (rotated
while the tailer was down), finish it first.  Then the path's file from 0 as the next
generation (the unread end of a rotated file no longer in the folder is lost).

Rotation by rename: the old file is read through the open descriptor until it has not
grown for ``ROTATE_QUIET_S`` (a writer may append before it reopens); an unterminated
last line is then taken as is, and the new file is followed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hourglass import log
from hourglass.crashpoints import crashpoint
from hourglass.durable import durable_write_bytes
from hourglass.producer.ids import sequence_stamp

logger = log.get("hourglass.tail")

BATCH_LINES = 1000
BATCH_BYTES = 1024 * 1024
ROTATE_QUIET_S = 1.0
FINGERPRINT = 32


class Checkpoint(msgspec.Struct):
    path: str
    dev: int
    ino: int
    generation: int
    offset: int  # every line before it was answered by the gateway
    line: int  # number of the line starting at offset (1-based)
    tail: bytes = b""  # the bytes just before offset
    # Random, per generation: its lines' producer session (``loader/producers.py``),
    # unique whatever the source, host or inode.  Empty in a checkpoint of an
    # earlier version: that generation's lines go without a sequence.
    session: str = ""

    def line_id(self, offset: int) -> str:
        return f"{self.dev}-{self.ino}-{self.generation}-{offset}"

    def stamp(self, number: int) -> bytes:
        """Line ``number``'s sequence attributes (``ids.sequence_stamp``; only with a
        session): every line before the checkpoint's was answered by the gateway, so
        its number minus one is the floor."""
        return sequence_stamp(f"tail-{self.session}", number, self.line - 1)


@dataclass(frozen=True)
class Line:
    offset: int
    number: int
    raw: bytes  # without the newline


@dataclass(frozen=True)
class Chunk:
    lines: list[Line]  # blank lines are consumed but not listed
    data: bytes  # every byte consumed, from the offset it was read at
    next_line: int


_checkpoint = msgspec.json.Decoder(Checkpoint)
_encoder = msgspec.json.Encoder()


# ------------------------------------------------------------------ pure parts


def split_lines(
    data: bytes, offset: int, number: int, *, max_lines: int = BATCH_LINES, final: bool = False
) -> tuple[list[Line], int, int]:
    """Complete lines of ``data`` (read at ``offset``): (lines, bytes used, next number).

    A last line without its newline is left for later, unless ``final``.
    """
    lines: list[Line] = []
    pos = 0
    while len(lines) < max_lines and pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            if not final:
                break
            end = len(data)
        raw = data[pos:end]
        if raw.strip():
            lines.append(Line(offset + pos, number, raw))
        number += 1
        pos = end + 1
    return lines, min(pos, len(data)), number


def read_chunk(fd: int, offset: int, number: int, *, final: bool = False) -> Chunk:
    """Up to ``BATCH_LINES`` lines / ``BATCH_BYTES`` (more for one longer line)."""
    size = BATCH_BYTES
    while True:
        data = os.pread(fd, size, offset)
        at_end = len(data) < size
        lines, used, next_line = split_lines(data, offset, number, final=final and at_end)
        if used or at_end:
            return Chunk(lines, data[:used], next_line)
        size *= 2


def truncated(fd: int, offset: int, tail: bytes) -> bool:
    """Did the file shrink below ``offset``, or change the bytes just before it?"""
    if os.fstat(fd).st_size < offset:
        return True
    return bool(tail) and os.pread(fd, len(tail), offset - len(tail)) != tail


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, path: str) -> Path:
        return self.root / f"{hashlib.sha256(path.encode()).hexdigest()[:16]}.json"

    def load(self, path: str) -> Checkpoint | None:
        try:
            return _checkpoint.decode(self.file(path).read_bytes())
        except FileNotFoundError:
            return None

    def save(self, checkpoint: Checkpoint) -> None:
        durable_write_bytes(self.file(checkpoint.path), _encoder.encode(checkpoint))


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fd_ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _find(path: Path, dev: int, ino: int) -> Path | None:
    """The file with this identity: at ``path``, or renamed in its folder."""
    if _ident(path) == (dev, ino):
        return path
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if entry.inode() == ino and entry.is_file() and entry.stat().st_dev == dev:
                logger.info("finishing a file rotated away", extra={"file": entry.path})
                return Path(entry.path)
    return None


class Follower:
    """One followed path: its open file, checkpoint, rotation and truncation."""

    def __init__(self, path: Path, source: str, state: StateDir) -> None:
        self.path, self.source, self.state = path, source, state
        self.fd: int | None = None
        self.cp = state.load(str(path))
        self.seen_size, self.grew_at = -1, time.monotonic()
        cp = self.cp
        found = None if cp is None or not path.parent.is_dir() else _find(path, cp.dev, cp.ino)
        if cp is not None and found is not None:
            fd = os.open(found, os.O_RDONLY)
            if _fd_ident(fd) == (cp.dev, cp.ino):  # still the same file once opened
                self.fd = fd
                return
            os.close(fd)
        self._open_new()

    def _open_new(self) -> bool:
        """Follow the file now at the path from 0, as the next generation."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd
        generation = 0 if self.cp is None else self.cp.generation + 1
        self.cp = Checkpoint(
            str(self.path), *_fd_ident(fd), generation, 0, 1, session=secrets.token_hex(8)
        )
        self.state.save(self.cp)
        return True

    def read(self, *, once: bool) -> Chunk | None:
        """The next lines to send, or None when there is nothing new yet."""
        while True:
            if (self.fd is None or self.cp is None) and not self._open_new():
                return None
            fd, cp = self.fd, self.cp
            if fd is None or cp is None:
                return None
            size, now = os.fstat(fd).st_size, time.monotonic()
            if size != self.seen_size:
                self.seen_size, self.grew_at = size, now
            at_path = _ident(self.path)
            rotated = at_path is not None and at_path != (cp.dev, cp.ino)
            done = rotated and (once or now - self.grew_at >= ROTATE_QUIET_S)
            chunk = read_chunk(fd, cp.offset, cp.line, final=done)
            if truncated(fd, cp.offset, cp.tail):  # checked after the read: no race with it
                logger.warning("file truncated: reading it from 0", extra={"file": cp.path})
                self.cp = msgspec.structs.replace(  # line numbers restart: a new session
                    cp,
                    generation=cp.generation + 1,
                    offset=0,
                    line=1,
                    tail=b"",
                    session=secrets.token_hex(8),
                )
                self.state.save(self.cp)
            elif chunk.data or not done:
                return chunk if chunk.data else None
            elif not self._open_new():
                return None
            else:
                logger.info("file rotated: following the new one", extra={"file": cp.path})

    def commit(self, chunk: Chunk) -> None:
        """Every line of ``chunk`` was answered: move the checkpoint past it."""
        cp = self.cp
        if cp is None:
            return
        crashpoint("tail.before_checkpoint")
        self.cp = msgspec.structs.replace(
            cp,
            offset=cp.offset + len(chunk.data),
            line=chunk.next_line,
            tail=(cp.tail + chunk.data)[-FINGERPRINT:],
        )
        self.state.save(self.cp)
