"""``hourglass tail``: follow NDJSON files and deliver every line, once, to the gateway.

A line is a full CloudEvent (it has ``specversion``: sent as is) or, with ``--type``,
the ``data`` of one, wrapped with ``source`` = ``--source`` or ``file://<host><path>``.
A line that needs an id gets ``<dev>-<inode>-<generation>-<offset>``: the same bytes
at the same place get the same id, so a re-send after a crash is a duplicate the lake
drops.  Such a line also carries its line number as a sequence of the generation's
session (``Checkpoint.stamp``): the loader then deduplicates it with state per file
generation instead of per line (``loader/producers.py``).  A line with its own id
goes without: the file may hold that event twice on purpose, and its key decides.

The *generation* is a per-path counter raised whenever the path gets a new
file (rename rotation) or its file shrinks under the offset (copy-truncate), so ids
of one path (one source) are never reused, even when an inode number is.

Per batch (the files and their checkpoints are ``follow.py``'s):

1. read complete lines after the checkpoint's offset (``Follower.read``);
2. POST them with ``post_batch`` (malformed lines one by one in binary mode, so the
   gateway keeps their raw bytes in the failed-events stream), retrying with
   ``Backoff`` until the gateway answered for every line: accepted, rejected or kept
   as unparseable;
3. move the checkpoint past them (``Follower.commit``: temp file, fsync, rename,
   fsync the folder).

A crash (kill -9, power loss) before step 3 leaves the previous checkpoint: the
lines after it are re-sent with the same ids and the lake keeps one copy (a
malformed line may reach the failed-events stream twice).  Files are polled every
``POLL_S`` (no inotify).
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from hourglass import log
from hourglass.producer.follow import Chunk, Follower, Line, StateDir
from hourglass.producer.http import Backoff, Outcome, classify, post_batch

logger = log.get("hourglass.tail")

POLL_S = 0.1
MALFORMED_TYPE = "hourglass.tail.malformed"


class _Probe(msgspec.Struct):
    specversion: Any = msgspec.UNSET
    id: Any = msgspec.UNSET


_probe = msgspec.json.Decoder(_Probe)
_encoder = msgspec.json.Encoder()


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
                if event is not line.raw:  # its id is ours: only a re-send repeats it
                    event = event.rstrip()[:-1] + cp.stamp(line.number) if cp.session else event
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
