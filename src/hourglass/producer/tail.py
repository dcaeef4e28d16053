"""``hourglass tail``: follow NDJSON files and deliver every line, once, to the gateway.

A line is a full CloudEvent (it has ``specversion``: sent as is) or, with ``--type``,
the ``data`` of one, wrapped with ``source`` = ``--source`` or ``file://<host><path>``.
A line that needs an id gets ``<dev>-<inode>-<generation>-<offset>``: the same bytes
at the same place get the same id, so a re-send after a crash is a duplicate the lake
drops.  The *generation* is a per-path counter raised whenever the path gets a new
file (rename rotation) or its file shrinks under the offset (copy-truncate), so ids
of one path (one source) are never reused, even when an inode number is.

Durable state: one checkpoint per path, ``<state-dir>/<sha256(path)[:16]>.json``
(dev+inode, generation, offset, line number, and the 32 bytes before the offset: a
fingerprint that notices a truncate-and-refill already past the offset).  Per batch:

1. read complete lines after the offset (a partial last line waits);
2. POST them with ``post_batch`` (malformed lines one by one in binary mode, so the
   gateway keeps their raw bytes in the failed-events stream), retrying with
   ``Backoff`` until the gateway answered for every line: accepted, rejected or kept
   as unparseable;
3. write the checkpoint: ``.tmp-`` file, fsync, rename, fsync the folder.

A new generation is checkpointed before any of its lines is sent.  A crash (kill -9,
power loss) before step 3 leaves the previous checkpoint, perhaps with a stale
``.tmp-`` file that the next write replaces: the lines after it are re-sent with the
same ids and the lake keeps one copy (a malformed line may reach the failed-events
stream twice).  A crash between rename and folder fsync leaves the old or the new
checkpoint; either is correct.

Recovery, per path: the checkpoint's file is at the path (same dev+inode): resume at
the offset, unless the file shrank below it or the fingerprint differs (then the next
generation, from 0).  Else, if it is in the same folder under another name (rotated
while the tailer was down), finish it first.  Then the path's file from 0 as the next
generation (the unread end of a rotated file no longer in the folder is lost).

Rotation by rename: the old file is read through the open descriptor until it has not
grown for ``ROTATE_QUIET_S`` (a writer may append before it reopens); an unterminated
last line is then taken as is, and the new file is followed.  Files are polled every
``POLL_S`` (no inotify).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from hourglass import log
from hourglass.crashpoints import crashpoint
from hourglass.durable import durable_write_bytes
from hourglass.producer.http import Backoff, Outcome, classify, post_batch

logger = log.get("hourglass.tail")

BATCH_LINES = 1000
BATCH_BYTES = 1024 * 1024
POLL_S = 0.1
ROTATE_QUIET_S = 1.0
FINGERPRINT = 32
MALFORMED_TYPE = "hourglass.tail.malformed"


class Checkpoint(msgspec.Struct):
    path: str
    dev: int
    ino: int
    generation: int
    offset: int  # every line before it was answered by the gateway
    line: int  # number of the line starting at offset (1-based)
    tail: bytes = b""  # the bytes just before offset

    def line_id(self, offset: int) -> str:
        return f"{self.dev}-{self.ino}-{self.generation}-{offset}"


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


class _Probe(msgspec.Struct):
    specversion: Any = msgspec.UNSET
    id: Any = msgspec.UNSET


_probe = msgspec.json.Decoder(_Probe)
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


def encode_line(raw: bytes, event_id: str, source: str, event_type: str | None) -> bytes | str:
    """The CloudEvent to send for a line, or why the line is malformed."""
    try:
        probe = _probe.decode(raw)
    except msgspec.ValidationError:
        return "not a JSON object"
    except msgspec.DecodeError as exc:
        return f"not JSON ({exc})"
    if probe.specversion is not msgspec.UNSET:
        if probe.id is not msgspec.UNSET:
            return raw
        return b'{"id":' + _encoder.encode(event_id) + b"," + raw.lstrip()[1:]
    if event_type is None:
        return "no specversion, so not a CloudEvent (use --type to send lines as data)"
    head = _encoder.encode(
        {"specversion": "1.0", "id": event_id, "source": source, "type": event_type}
    )
    return head[:-1] + b',"data":' + raw + b"}"


def file_source(path: Path) -> str:
    return quote(f"file://{socket.gethostname()}{path.absolute()}", safe="/:@")


# ------------------------------------------------------------------ files


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
        self.cp = Checkpoint(str(self.path), *_fd_ident(fd), generation, 0, 1)
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
                self.cp = msgspec.structs.replace(
                    cp, generation=cp.generation + 1, offset=0, line=1, tail=b""
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


# ------------------------------------------------------------------ sending


class Tailer:
    def __init__(
        self,
        paths: list[Path],
        http: httpx.Client,
        state_dir: Path,
        *,
        event_type: str | None = None,
        source: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        state = StateDir(state_dir)
        self.followers = [Follower(p.absolute(), source or file_source(p), state) for p in paths]
        self.http, self.event_type, self.stop = http, event_type, stop or threading.Event()

    def run(self, *, once: bool = False) -> bool:
        """Tail until stopped (or, with ``once``, until every file is read); False if stopped."""
        try:
            while not self.stop.is_set():
                busy = False
                for follower in self.followers:
                    chunk = follower.read(once=once)
                    if chunk is None:
                        continue
                    if not self._send(follower, chunk):
                        return False
                    follower.commit(chunk)
                    busy = True
                if not busy:
                    if once:
                        return True
                    self.stop.wait(POLL_S)
            return False
        finally:
            self.http.close()

    def _send(self, follower: Follower, chunk: Chunk) -> bool:
        cp = follower.cp
        if cp is None:
            return True
        events: list[bytes] = []
        where: list[Line] = []
        for line in chunk.lines:
            event_id = cp.line_id(line.offset)
            event = encode_line(line.raw, event_id, follower.source, self.event_type)
            if isinstance(event, bytes):
                events.append(event)
                where.append(line)
            elif not self._send_malformed(follower, line, event_id, event):
                return False
        return self._deliver(follower, events, where)

    def _deliver(self, follower: Follower, events: list[bytes], where: list[Line]) -> bool:
        backoff = Backoff()
        while events:
            outcome = post_batch(self.http, events)
            if outcome.kind == "done":
                for rejection in outcome.rejected:
                    if 0 <= rejection.index < len(where):
                        line = where[rejection.index]
                        self._report(follower, line, f"rejected: {rejection.reason}")
                return True
            if outcome.kind == "too_large" and len(events) > 1:
                half = len(events) // 2
                return self._deliver(follower, events[:half], where[:half]) and self._deliver(
                    follower, events[half:], where[half:]
                )
            if outcome.kind in ("too_large", "refused"):
                for line in where:
                    self._report(follower, line, f"{outcome.status} {outcome.reason}")
                return True
            if not self._wait(backoff, outcome):
                return False
        return True

    def _send_malformed(self, follower: Follower, line: Line, event_id: str, why: str) -> bool:
        """Binary mode, the raw line as body: the gateway keeps it in the failed stream."""
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": quote(event_id),
            "ce-source": quote(follower.source, safe="/:@"),
            "ce-type": quote(self.event_type or MALFORMED_TYPE),
        }
        backoff = Backoff()
        while True:
            try:
                outcome = classify(self.http.post("/v1/events", content=line.raw, headers=headers))
            except httpx.HTTPError as exc:
                outcome = Outcome("retry", reason=f"gateway unreachable: {exc!r}")
            if outcome.kind != "retry":
                kept = outcome.status == 400 or outcome.rejected or outcome.accepted
                said = outcome.rejected[0].reason if outcome.rejected else outcome.reason
                fate = "kept in the failed-events stream" if kept else "NOT KEPT"
                self._report(follower, line, f"malformed line, {why}; {fate} ({said})")
                return True
            if not self._wait(backoff, outcome):
                return False

    def _wait(self, backoff: Backoff, outcome: Outcome) -> bool:
        delay = backoff.next_delay(outcome.retry_after)
        logger.warning(
            "gateway did not answer; retrying",
            extra={"status": outcome.status, "reason": outcome.reason, "retry_in_s": delay},
        )
        return not self.stop.wait(delay)

    def _report(self, follower: Follower, line: Line, reason: str) -> None:
        logger.warning(f"{follower.path}:{line.number}: {reason}")


# ------------------------------------------------------------------ command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="NDJSON files")
    parser.add_argument("--type", dest="event_type", metavar="TYPE", help="lines are data of TYPE")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL")
    parser.add_argument(
        "--state-dir", type=Path, default=Path("hourglass-tail-state"), help="checkpoints"
    )
    parser.add_argument("--source", help="source of wrapped lines (default file://<host><path>)")
    parser.add_argument("--api-key", help="API key, if the gateway requires one")
    parser.add_argument("--once", action="store_true", help="read every file to its end, exit")
    parser.add_argument("--log-level", default="info", help="debug, info, warning (info)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = sub.add_parser("tail", help="follow NDJSON files, surviving rotation and restarts")
    _arguments(tail)


def cmd_tail(args: argparse.Namespace) -> int:
    log.setup(args.log_level)
    stop = threading.Event()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    http = httpx.Client(base_url=args.url, timeout=10.0, headers=headers)
    tailer = Tailer(
        args.paths, http, args.state_dir, event_type=args.event_type, source=args.source, stop=stop
    )
    finished = tailer.run(once=args.once)
    return 0 if finished or not args.once else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hourglass tail", description="Follow NDJSON files, deliver every line once."
    )
    _arguments(parser)
    return cmd_tail(parser.parse_args(argv))
