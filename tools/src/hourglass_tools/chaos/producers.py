"""The chaos producers: child processes that send a counting sequence of events
and write down, durably, every id Hourglass has promised to deliver.

Run as ``python -m hourglass_tools.chaos.producers {sdk|http} NAME URL FOLDER FIRST``.
Ids are ``<NAME>-<n, 9 digits>`` with ``n`` counting up from ``FIRST``; the
source is ``/chaos/<NAME>``; ``data`` is a function of ``n`` only, so a re-send
after a kill is the same event.  Types alternate by ``n`` between two demo
types, so two streams (and two loader tasks) carry traffic.

The ack log ``<FOLDER>/acked.log`` has one line ``<n> <unix time>`` per promised
event, appended and fsynced only *after* the promise was made:

* ``sdk``: after :meth:`Producer.emit` returned — the event is in the spool,
  and the spool guarantees delivery once it is flushed;
* ``http``: after a 200 answer listed the event as accepted (not rejected);
  on 429/503/5xx/timeouts the batch is re-sent with the same ids.

A kill -9 between the promise and the log line loses only the line: the
harness restarts the producer at the id after the last logged one, so the
unlogged events are sent again with the same ``(source, id)`` and the lake
must keep one copy.  A line cut short by a kill (no newline) does not count.

SIGTERM asks for a clean stop: ``sdk`` stops emitting, flushes its spool and
exits 0 if the gateway answered for everything (3 if not); ``http`` finishes or
abandons (unlogged) the batch in flight and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

TYPES = ("music.SongSkipped", "music.SearchPerformed")
ACK_LOG = "acked.log"
REJECTED_LOG = "rejected.log"
GROUP = 20  # events per log write (sdk) and per POST (http)
RETRY_CAP_S = 1.0  # chaos must not let a producer sleep through the run


def event_id(name: str, n: int) -> str:
    return f"{name}-{n:09d}"


def source_of(name: str) -> str:
    return f"/chaos/{name}"


def type_of(n: int) -> str:
    return TYPES[n % len(TYPES)]


def data_of(n: int) -> dict[str, Any]:
    """A valid ``data`` for ``type_of(n)``, depending on ``n`` alone."""
    user = str(uuid.UUID(int=n + 1, version=4))
    when = "2026-11-26T12:00:00.000Z"
    if type_of(n) == "music.SongSkipped":
        return {
            "user_id": user,
            "track_id": f"t-{n}",
            "skipped_at": when,
            "position_ms": n % 600_000,
        }
    return {
        "user_id": user,
        "query": f"q-{n}",
        "searched_at": when,
        "result_count": n % 50,
        "latency_ms": float(n % 1000),
    }


def read_acked(folder: Path) -> list[tuple[int, float]]:
    """``(n, unix time)`` of every complete line of the ack log."""
    path = folder / ACK_LOG
    if not path.exists():
        return []
    out = []
    for line in path.read_text().split("\n")[:-1]:  # after the last newline: torn
        n, _, at = line.partition(" ")
        out.append((int(n), float(at)))
    return out


def next_first(folder: Path) -> int:
    acked = read_acked(folder)
    return max(n for n, _ in acked) + 1 if acked else 0


class _AckLog:
    def __init__(self, folder: Path, name: str = ACK_LOG) -> None:
        self.fd = os.open(folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, lines: list[str]) -> None:
        if lines:
            os.write(self.fd, "".join(lines).encode())
            os.fsync(self.fd)


class _Stop:
    def __init__(self) -> None:
        self.asked = False
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self.asked = True


def _pace(started: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)


def run_sdk(name: str, url: str, folder: Path, first: int, rate: float) -> int:
    from hourglass.producer import Producer

    stop = _Stop()
    log = _AckLog(folder)
    producer = Producer(url, spool_dir=folder / "spool", source=source_of(name), linger_ms=5)
    n, started = first, time.monotonic()
    while not stop.asked:
        lines = []
        for _ in range(GROUP):
            producer.emit(type_of(n), data_of(n), id=event_id(name, n))
            lines.append(f"{n} {time.time():.6f}\n")
            n += 1
        log.write(lines)
        _pace(started, n - first, rate)
    flushed = producer.flush(timeout=60)
    producer.close(timeout=1)
    return 0 if flushed else 3


def _batch(name: str, first: int) -> tuple[bytes, list[int]]:
    import msgspec

    numbers = list(range(first, first + GROUP))
    events = [
        {
            "specversion": "1.0",
            "id": event_id(name, n),
            "source": source_of(name),
            "type": type_of(n),
            "data": data_of(n),
        }
        for n in numbers
    ]
    return msgspec.json.encode(events), numbers


def run_http(name: str, url: str, folder: Path, first: int, rate: float) -> int:
    import httpx

    from hourglass.protocol import BATCH

    stop = _Stop()
    log, rejected_log = _AckLog(folder), _AckLog(folder, REJECTED_LOG)
    headers = {"content-type": BATCH}
    n, started = first, time.monotonic()
    with httpx.Client(base_url=url, timeout=3.0) as client:
        while not stop.asked:
            body, numbers = _batch(name, n)
            delay = 0.05
            while True:
                try:
                    response = client.post("/v1/events", content=body, headers=headers)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    break
                if response is not None and response.status_code in (400, 401, 403, 413, 415):
                    # Permanent for this batch: nothing is acknowledged; the harness reports it.
                    rejected_log.write([f"{n} status {response.status_code} {response.text!r}\n"])
                    break
                if stop.asked:
                    return 0  # nothing of this batch was acknowledged
                time.sleep(delay)
                delay = min(delay * 2, RETRY_CAP_S)
            if response is not None and response.status_code == 200:
                answer = response.json()
                bad = {int(r["index"]) for r in answer.get("rejected", [])}
                lines = [f"{m} {time.time():.6f}\n" for i, m in enumerate(numbers) if i not in bad]
                log.write(lines)
                rejected_log.write([f"{numbers[i]} rejected {answer!r}\n" for i in sorted(bad)])
            n += GROUP
            _pace(started, n - first, rate)
    return 0


def main(argv: list[str]) -> int:
    from hourglass import log

    log.setup("warning")  # the SDK's retries, one key=value line each
    kind, name, url, folder, first, rate = argv
    run = run_sdk if kind == "sdk" else run_http
    return run(name, url, Path(folder), int(first), float(rate))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
