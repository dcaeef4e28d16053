"""The producer's spool: a crash-safe local queue of encoded events.

Chosen over SQLite because the access pattern is a log (append at the head,
acknowledge at the tail), so segment files with one ``write`` per event and a
cursor file are all it needs (see docs/producer.md for the measurement).

On disk (``<dir>/``)::

    seg-<first seq, 20 digits>.log   records: u32 length | u32 crc32(length, payload) | payload
    cursor                           highest seq acknowledged, every lower one too
    producer-id                      random id: the default CloudEvents source

Invariants:

* A record's sequence number is its segment's first seq plus its position in
  the segment; sequence numbers rise by one, across segments.
* ``append`` hands the record to the kernel with one ``write`` before it
  returns, so a crash of the *process* (kill -9) never loses an emitted event.
  A crash of the *machine* loses what was not fsynced: nothing with
  ``fsync="always"`` (every emit waits for an fsync, shared by concurrent
  emitters — group commit), at most the last ``fsync_interval_ms`` of emits
  with ``fsync="interval"``.
* ``cursor`` is replaced atomically (temp, fsync, rename, fsync folder) after
  the gateway answered for every record up to it.  A crash before that means
  those records are sent again: the gateway and loader deduplicate by
  ``(source, id)``, which a resend keeps.
* Segments whose records are all at or below the cursor are deleted.

Recovery reads the cursor, then every segment: the first record that is short
or fails its checksum ends the segment.  In the last segment that is a torn
tail from a crash mid-write and is cut off; in an earlier one it is corruption,
and the rest of that segment is moved aside to ``*.corrupt`` (counted, logged)
rather than blocking the spool.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hourglass import log
from hourglass.durable import fsync_dir
from hourglass.exceptions import SpoolFull

logger = log.get("hourglass.producer")

_HEADER = struct.Struct("<II")
FsyncPolicy = Literal["always", "interval"]


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int = 0
    count: int = 0

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


def _crc(length: int, payload: bytes) -> int:
    """CRC-32 over the length and the payload, so a bad length is caught too."""
    return zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little")))


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval_ms: float = 50.0,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.policy = fsync
        self.interval = fsync_interval_ms / 1000
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.corrupt_records = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sync_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd = -1
        self._closed = False
        self.cursor = self._read_cursor()
        self.pending_bytes = 0
        self._recover()
        self.next_seq = self._segments[-1].last_seq + 1 if self._segments else self.cursor + 1
        self._synced_seq = self.next_seq - 1
        self._read_seq = self.cursor + 1
        self._read_pos = self._position_of(self._read_seq)
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="spool-fsync", daemon=True)
            self._syncer.start()

    # ---------------------------------------------------------------- recovery

    def _read_cursor(self) -> int:
        path = self.dir / "cursor"
        return int(path.read_text()) if path.exists() else 0

    def _recover(self) -> None:
        paths = sorted(self.dir.glob("seg-*.log"))
        for i, path in enumerate(paths):
            seg = _Segment(int(path.stem[4:]), path)
            data = path.read_bytes()
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, offset)
                end = offset + _HEADER.size + length
                payload = data[offset + _HEADER.size : end]
                # A zero length is never written: zeros left by a crash end the segment.
                if not length or end > len(data) or _crc(length, payload) != crc:
                    break
                if seg.first_seq + seg.count > self.cursor:
                    self.pending_bytes += end - offset
                seg.count += 1
                offset = end
            if offset < len(data):
                self._cut(path, data, offset, last=i == len(paths) - 1)
            seg.size = offset
            if seg.count and seg.last_seq <= self.cursor and i < len(paths) - 1:
                path.unlink()
                continue
            self._segments.append(seg)
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def _cut(self, path: Path, data: bytes, offset: int, *, last: bool) -> None:
        if not last:
            aside = path.with_name(f"{path.name}.corrupt-{offset}")
            aside.write_bytes(data[offset:])
            self.corrupt_records += 1
            logger.error(
                "spool segment corrupt; rest moved aside",
                extra={"segment": str(path), "offset": offset, "aside": str(aside)},
            )
        else:
            logger.warning(
                "spool tail torn by a crash; cut", extra={"segment": str(path), "offset": offset}
            )
        with open(path, "r+b") as f:
            f.truncate(offset)
            os.fsync(f.fileno())

    def _position_of(self, seq: int) -> tuple[int, int]:
        """(segment index, byte offset) of record ``seq`` (or of the end)."""
        for index, seg in enumerate(self._segments):
            if seq <= seg.last_seq:
                with open(seg.path, "rb") as f:
                    offset = 0
                    for _ in range(seq - seg.first_seq):
                        f.seek(offset)
                        (length, _crc) = _HEADER.unpack(f.read(_HEADER.size))
                        offset += _HEADER.size + length
                return index, offset
        return max(len(self._segments) - 1, 0), self._segments[-1].size if self._segments else 0

    # ------------------------------------------------------------------ write

    def append(
        self,
        payload: bytes,
        *,
        timeout: float | None = None,
        stamp: Callable[[int, int], bytes] | None = None,
    ) -> int:
        """Write one record; return its sequence number once durable per the policy.

        ``stamp(seq, cursor)``, if given, is appended to ``payload`` under the
        spool's lock: the record's own sequence number and the cursor as it
        stands (every lower record answered), sealed in the record, so a re-send
        after a restart carries the same values (``loader/producers.py``)."""
        if not payload:
            raise ValueError("an empty record cannot be spooled")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:  # stamped again after a wait: the cursor and next seq move
                full = payload + stamp(self.next_seq, self.cursor) if stamp else payload
                record = _HEADER.pack(len(full), _crc(len(full), full)) + full
                if self.pending_bytes + len(record) <= self.max_bytes or not self.pending_bytes:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._closed:
                    raise SpoolFull(
                        f"spool {self.dir} holds {self.pending_bytes} bytes not yet "
                        f"acknowledged (max_spool_bytes {self.max_bytes}); the gateway is "
                        "unreachable or slower than emits"
                    )
                self._changed.wait(left)
            if not self._segments or self._segments[-1].size >= self.segment_bytes:
                self._roll()
            seg = self._segments[-1]
            os.write(self._fd, record)
            seq = self.next_seq
            self.next_seq += 1
            seg.size += len(record)
            seg.count += 1
            self.pending_bytes += len(record)
            self._changed.notify_all()
        if self.policy == "always":
            self._sync_through(seq)
        return seq

    def _roll(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        seg = _Segment(self.next_seq, self.dir / f"seg-{self.next_seq:020d}.log")
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fsync_dir(self.dir)
        self._segments.append(seg)

    def _sync_through(self, seq: int) -> None:
        """Group commit: one fsync covers every record written before it started."""
        if self._synced_seq >= seq:
            return
        with self._sync_lock:
            if self._synced_seq >= seq:
                return
            with self._lock:
                if self._fd < 0:
                    return
                # A duplicate stays valid even if a rollover closes the original.
                target, fd = self.next_seq - 1, os.dup(self._fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._synced_seq = target

    def _sync_loop(self) -> None:
        while not self._closed:
            time.sleep(self.interval)
            if self._synced_seq < self.next_seq - 1:
                try:
                    self._sync_through(self.next_seq - 1)
                except OSError as exc:
                    logger.error("spool fsync failed", extra={"error": repr(exc)})

    # ------------------------------------------------------------------- read

    def read(self, max_events: int, max_bytes: int, wait: float) -> list[tuple[int, bytes]]:
        """Up to ``max_events`` records after the last one read, waiting up to ``wait``."""
        with self._changed:
            if self._read_seq >= self.next_seq and not self._closed:
                self._changed.wait(wait)
            out: list[tuple[int, bytes]] = []
            size = 0
            while self._read_seq < self.next_seq and len(out) < max_events:
                index, offset = self._read_pos
                seg = self._segments[index]
                # Records moved aside as corrupt leave a gap before a segment.
                self._read_seq = max(self._read_seq, seg.first_seq)
                if offset >= seg.size:
                    self._read_pos = (index + 1, 0)
                    continue
                with open(seg.path, "rb") as f:
                    f.seek(offset)
                    while offset < seg.size and len(out) < max_events and size < max_bytes:
                        length, _crc = _HEADER.unpack(f.read(_HEADER.size))
                        out.append((self._read_seq, f.read(length)))
                        offset += _HEADER.size + length
                        size += length
                        self._read_seq += 1
                self._read_pos = (index, offset)
                if size >= max_bytes:
                    break
            return out

    # -------------------------------------------------------------------- ack

    def ack(self, upto_seq: int, nbytes: int) -> None:
        """Every record up to ``upto_seq`` was answered by the gateway."""
        path = self.dir / "cursor"
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(str(upto_seq))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.dir)
        with self._changed:
            self.cursor = upto_seq
            self.pending_bytes -= nbytes
            while len(self._segments) > 1 and self._segments[0].last_seq <= upto_seq:
                self._segments.pop(0).path.unlink()
                index, offset = self._read_pos
                # Reading stood in the removed segment only if it had read all of it.
                self._read_pos = (index - 1, offset) if index > 0 else (0, 0)
            self._changed.notify_all()

    def rewind(self) -> None:
        """Read again from the cursor (after a send that will not be retried here)."""
        with self._changed:
            self._read_seq = self.cursor + 1
            self._read_pos = self._position_of(self._read_seq)

    @property
    def unacked(self) -> int:
        return self.next_seq - 1 - self.cursor

    def wait_acked(self, seq: int, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.cursor < seq:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._syncer is not None:
            self._syncer.join()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
