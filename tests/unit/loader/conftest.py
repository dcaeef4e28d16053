"""A StreamLoader on real temp files, fed bus messages by hand, with a fake clock.

Messages are built exactly as the gateway builds them (envelopes of
``hourglass.events`` with ``received_at`` set, encoded as NDJSON lines), so the
loader sees what it sees in production, minus the bus.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hourglass.bus.consumer import BusMessage
from hourglass.events import EventTypes
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.layout import ONLY, Partition
from hourglass.lake.manifest import Manifest
from hourglass.loader.state import FileCheckpoints, LoaderState, Saved
from hourglass.loader.stream import StreamLoader
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry

REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
TYPES = EventTypes(REGISTRY)
SCHEMAS = {s.type_name: s for s in REGISTRY}
SKIPPED = "music.SongSkipped"
H0 = int(dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC).timestamp())  # an hour's start
_ENCODER = msgspec.json.Encoder()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


def skipped(source: str = "/unit", event_id: str | None = None) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": SKIPPED,
        "data": {
            "user_id": str(uuid.uuid4()),
            "track_id": "t-1",
            "skipped_at": "2026-03-01T10:00:00.123Z",
            "position_ms": 7,
        },
    }


def ndjson(events: list[dict[str, Any]], received_at: float) -> bytes:
    """Gateway-format bus payload: one envelope per line, ``received_at`` stamped."""
    stamp = dt.datetime.fromtimestamp(received_at, dt.UTC)
    envelopes = []
    for e in events:
        envelope = TYPES.decoders[e["type"]].decode(msgspec.json.encode(e))
        envelope.received_at = stamp
        envelopes.append(envelope)
    return _ENCODER.encode_lines(envelopes)


def key(e: dict[str, Any]) -> tuple[str, str]:
    return (e["source"], e["id"])


class Harness:
    """One stream's loader and its files; ``restart()`` is a new process."""

    partition: Partition = ONLY  # a subclass's: one partition of a partitioned type

    @property
    def partition_tag(self) -> str:
        return "" if self.partition.index is None else f"-p{self.partition.index}"

    def __init__(
        self, root: Path, type_name: str = SKIPPED, width_s: int = 60, window_s: int = 86400
    ) -> None:
        self.root = root
        self.type_name = type_name
        self.width = width_s
        self.window = window_s
        self.clock = Clock(H0)
        self.seq = 0
        self.loader = self.restart()

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def state_path(self) -> Path:
        return self.root / "loader" / f"{self.type_name}{self.partition_tag}.json"

    def restart(self) -> StreamLoader:
        self.loader = StreamLoader(
            self.type_name,
            LakeSchema(SCHEMAS[self.type_name]),
            lake=self.lake,
            checkpoints=FileCheckpoints(self.state_path),
            quarantine=self.root / f"quarantine{self.partition_tag}",
            width_s=self.width,
            window_s=self.window,
            clock=self.clock,
            partition=self.partition,
        )
        self.loader.recover()
        return self.loader

    def rows(self, events: list[dict[str, Any]], at: float) -> BusMessage:
        self.seq += 1
        return BusMessage(self.seq, ndjson(events, at))

    def raw(self, data: bytes) -> BusMessage:
        self.seq += 1
        return BusMessage(self.seq, data)

    def marker(self, gateway: str, at: float) -> BusMessage:
        self.seq += 1
        return BusMessage(self.seq, b"", (gateway, int(at * 1_000_000)))

    def load(self, *messages: BusMessage) -> int:
        """process + flush, as one iteration of the service loop."""
        self.loader.process(list(messages))
        return self.loader.flush()

    def folder(self, start: float) -> Path:
        begin = dt.datetime.fromtimestamp(start, dt.UTC)
        path = self.lake / self.type_name / f"date={begin:%Y-%m-%d}" / f"hour={begin:%H}"
        return path / f"minute={begin:%M}" if self.width < 3600 else path

    def keys(self) -> list[tuple[str, str]]:
        out = []
        for path in sorted((self.lake / self.type_name).rglob("part-*.parquet")):
            t = pq.read_table(path, columns=["source", "id"])
            out += zip(t.column("source").to_pylist(), t.column("id").to_pylist(), strict=True)
        return out

    def keys_in(self, start: float) -> list[tuple[str, str]]:
        out = []
        for path in sorted(self.folder(start).glob("part-*.parquet")):
            t = pq.read_table(path, columns=["source", "id"])
            out += zip(t.column("source").to_pylist(), t.column("id").to_pylist(), strict=True)
        return out

    def manifest(self, start: float) -> Manifest | None:
        path = self.folder(start) / "_SUCCESS.json"
        return msgspec.json.decode(path.read_bytes(), type=Manifest) if path.exists() else None

    def state(self) -> LoaderState:
        return msgspec.json.decode(self.state_path.read_bytes(), type=Saved).state

    def snapshot(self, start: float) -> dict[str, bytes]:
        folder = self.folder(start)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}

    def table(self) -> pa.Table:
        paths = sorted((self.lake / self.type_name).rglob("part-*.parquet"))
        return pa.concat_tables([pq.read_table(p) for p in paths])


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


class Crash(BaseException):
    """Stands in for kill -9 at a crash point: nothing after it runs."""


CrashAt = Callable[..., None]


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> CrashAt:
    """``crash_at("loader.after_part", n)`` raises Crash at the n-th pass there."""

    def arm(name: str, n: int = 1) -> None:
        left = [n]

        def crashpoint(point: str) -> None:
            if point == name:
                left[0] -= 1
                if left[0] == 0:
                    raise Crash(point)

        monkeypatch.setattr("hourglass.loader.stream.crashpoint", crashpoint)
        monkeypatch.setattr("hourglass.loader.close.crashpoint", crashpoint)
        monkeypatch.setattr("hourglass.durable.crashpoint", crashpoint)
        monkeypatch.setattr("hourglass.loader.staging.crashpoint", crashpoint)

    return arm
