"""What the bench sends: its own event types, request bodies, and the send schedule.

Event types ``bench.E0`` ... ``bench.E<k-1>`` share one small schema
(``seq``, ``pad``, ``sent_us``); ``pad`` brings each event to the asked size.
``sent_us`` is the client's *scheduled* send time (µs since the epoch): the
lake then says, per row, how long after it was sent it landed.

Bodies are built without a per-event Python loop: a request's template is
split at the one place that changes per request, ``<sent_us>},"id":"<request>``
(``sent_us`` is the last field of ``data``, ``id`` follows it), and one
``bytes.join`` with that separator builds the body.  Each event's id is
``<request:012d>-<index:05d>``, unique per request.

``sequenced``: events as Hourglass's SDK sends them, with the producer sequence
attributes (``hgproducer``/``hgseq``/``hgacked``), each request its own session
(``hgproducer`` is the request number, in the separator; ``hgseq`` the index
plus one; ``hgacked`` 0), so the loader deduplicates them by sequence.  A
session per request is the worst case for the loader's table (a new session
per 1,000 events; 100,000 sessions are reached after 100 M events and the
oldest leave, counted as evicted); an SDK keeps one session for its life.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SOURCE = "/hourglass-bench"
_ID_WIDTH = 12
_TS_WIDTH = 16  # µs since the epoch, until the year 2286
_PLACEHOLDER_RECEIVED = "2026-01-01T00:00:00.000000Z"  # the size of a real stamp


def type_names(types: int) -> list[str]:
    return [f"bench.E{i}" for i in range(types)]


def write_schemas(folder: Path, types: int) -> Path:
    """One ``.avsc`` per bench type in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(types):
        schema = {
            "type": "record",
            "name": f"E{i}",
            "namespace": "bench",
            "doc": "A synthetic event of the Hourglass bench.",
            "fields": [
                {"name": "seq", "type": "int"},
                {"name": "pad", "type": "string"},
                {"name": "sent_us", "type": "long"},
            ],
        }
        (folder / f"E{i}.avsc").write_text(json.dumps(schema, indent=2) + "\n")
    return folder


@dataclass(frozen=True)
class Workload:
    events_per_request: int = 1000
    event_bytes: int = 160
    types: int = 2
    duplicates: float = 0.01  # share of requests that resend an earlier request
    sequenced: bool = False  # with the SDK's sequence attributes (see the module)

    def __post_init__(self) -> None:
        if self.events_per_request < 1 or self.events_per_request > 99_999:
            raise ValueError("events per request must be 1..99999")
        if self.types < 1:
            raise ValueError("at least one event type")
        if not 0.0 <= self.duplicates < 1.0:
            raise ValueError("duplicates is a share of requests, 0 <= d < 1")

    @property
    def resend_every(self) -> int:
        """Every n-th request resends the previous one (0: never)."""
        return round(1.0 / self.duplicates) if self.duplicates > 0 else 0

    def _head(self, index: int) -> str:
        type_name = f"bench.E{index % self.types}"
        return (
            f'{{"specversion":"1.0","type":"{type_name}","source":"{SOURCE}",'
            f'"data":{{"seq":{index},"pad":"'
        )

    def _pad(self, index: int) -> str:
        """Padding that brings one event (as sent) to ``event_bytes``."""
        fixed = len(self._head(index)) + len('","sent_us":') + _TS_WIDTH
        fixed += len('},"id":"') + _ID_WIDTH + len("-00000") + len('"}')
        if self.sequenced:
            fixed += len(_PRODUCER) + _ID_WIDTH + len('"') + len(self._sequence(index))
        return "x" * max(self.event_bytes - fixed, 0)

    def _sequence(self, index: int) -> str:
        return f',"hgseq":{index + 1},"hgacked":0' if self.sequenced else ""

    def _parts(self, ndjson: bool) -> list[bytes]:
        """Text between the separators; ``len(parts) == events + 1``."""
        parts: list[str] = []
        tail = ""
        for i in range(self.events_per_request):
            end = '","sent_us":'
            head = self._head(i) + self._pad(i) + end
            if i == 0:
                parts.append(("" if ndjson else "[") + head)
            else:
                parts.append(tail + ("\n" if ndjson else ",") + head)
            stamp = f',"received_at":"{_PLACEHOLDER_RECEIVED}"' if ndjson else ""
            tail = f'-{i:05d}"{self._sequence(i)}{stamp}}}'
        parts.append(tail + ("\n" if ndjson else "]"))
        return [p.encode() for p in parts]

    def templates(self) -> tuple[list[bytes], list[bytes]]:
        """(HTTP batch parts, bus NDJSON parts)."""
        return self._parts(False), self._parts(True)

    def build(self, parts: list[bytes], request: int, sent_us: int) -> bytes:
        """The body of request ``request`` scheduled at ``sent_us``."""
        if not self.sequenced:
            return build(parts, request, sent_us)
        number = f"{request:0{_ID_WIDTH}d}"
        sep = f'{sent_us:0{_TS_WIDTH}d}}}{_PRODUCER}{number}","id":"{number}'.encode()
        return sep.join(parts)


_PRODUCER = ',"hgproducer":"'


def separator(request: int, sent_us: int) -> bytes:
    return f'{sent_us:0{_TS_WIDTH}d}}},"id":"{request:0{_ID_WIDTH}d}'.encode()


def build(parts: list[bytes], request: int, sent_us: int) -> bytes:
    """The body of request ``request`` scheduled at ``sent_us`` (not sequenced)."""
    return separator(request, sent_us).join(parts)


def scheduled_at(start: float, slot: int, interval: float) -> float:
    """Open loop: slot ``slot`` is due at ``start + slot * interval``, whatever
    happened to earlier slots; latency is counted from this time, so a slow
    answer cannot hide the requests that should have gone out meanwhile."""
    return start + slot * interval


def request_interval(rate_eps: float, events_per_request: int) -> float:
    """Seconds between requests for ``rate_eps`` events per second."""
    if rate_eps <= 0:
        raise ValueError("rate must be positive")
    return events_per_request / rate_eps


def parse_rate(text: str) -> tuple[str, float]:
    """``max`` | ``<p>%`` (of the maximum, found first) | events/s (``500k``, ``1.2M``)."""
    t = text.strip().lower()
    if t == "max":
        return "max", 0.0
    if t.endswith("%"):
        share = float(t[:-1]) / 100.0
        if not 0 < share <= 1.5:
            raise ValueError(f"rate {text!r}: a share of the maximum, e.g. 50%")
        return "share", share
    scale = {"k": 1e3, "m": 1e6}.get(t[-1:], 1.0)
    value = float(t[:-1] if scale != 1.0 else t) * scale
    if value <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    return "fixed", value


def parse_duration(text: str) -> float:
    """``60``, ``60s``, ``5m``, ``1h`` → seconds."""
    t = text.strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:], 0.0)
    value = float(t[:-1]) * scale if scale else float(t)
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return value
