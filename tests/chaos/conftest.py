"""Fixtures and lake checks for the loader's integration and chaos tests.

The process fixtures (``nats_server``, ``start_gateway``, ``start_loader``) are the
integration ones.  The helpers read the lake the way its users do (pyarrow and
DuckDB, hive-partitioned), check every ``_SUCCESS.json`` against its folder, and
publish gateway-format batches straight to the bus, as a gateway would, but with
a chosen ``received_at``: the only way to have a backlog of events from earlier
minutes without waiting for those minutes to pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import httpx
import msgspec
import nats
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from hourglass.bus.jetstream import FAILED_SUBJECT, KIND, MSG_ID, connect, stream_name, subject
from hourglass.bus.ownership import read_loaders, read_record
from hourglass.events import EventTypes, FailedEvent
from hourglass.exceptions import BusUnavailable
from hourglass.lake.manifest import Manifest
from hourglass.loader.state import Saved
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry
from tests.integration.conftest import (  # noqa: F401  (fixtures)
    nats_server,
    one_type_schemas,
    start_gateway,
    start_loader,
)
from tests.integration.support import BATCH, skipped

T = TypeVar("T")
REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
TYPES = EventTypes(REGISTRY)
SKIPPED = "music.SongSkipped"
Key = tuple[str, str]  # (source, id)


# --------------------------------------------------------------------- fixtures


# One-minute buckets, fast markers, leases and flushes: a chaos case closes buckets,
# notices a dead gateway and takes a killed loader's streams over within seconds.
FAST = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 3.0,
    "loader_lease_ttl_s": 3.0,
    "flush_interval_s": 0.5,
}


# ------------------------------------------------------------------------ time


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, pa.ArrowException, duckdb.Error):
            result = None  # a file renamed or deleted under the reader: look again
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def minute_start(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(t) - int(t) % 60, dt.UTC)


def away_from_minute_edge(margin: float = 3.0) -> None:
    """Sleep past the next minute boundary if it is less than ``margin`` s away."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


# ------------------------------------------------------------------ publishing


def bus_lines(events: list[dict[str, Any]], received_at: dt.datetime) -> dict[str, bytes]:
    """NDJSON per type exactly as the gateway puts it on the bus (``events.py``)."""
    encoder = msgspec.json.Encoder()
    by_type: dict[str, list[Any]] = {}
    for e in events:
        envelope = TYPES.decoders[e["type"]].decode(msgspec.json.encode(e))
        envelope.received_at = received_at
        by_type.setdefault(e["type"], []).append(envelope)
    return {name: encoder.encode_lines(envs) for name, envs in by_type.items()}


def publish_raw(url: str, messages: list[tuple[str, bytes]]) -> list[int]:
    """Publish (subject, payload) batches durably, as a gateway does; stream seqs."""

    async def run() -> list[int]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream(timeout=10)
            seqs = []
            for subj, payload in messages:
                headers = {MSG_ID: f"test-{uuid.uuid4()}", KIND: "batch"}
                ack = await js.publish(subj, payload, headers=headers)
                seqs.append(int(ack.seq))
            return seqs
        finally:
            await nc.close()

    return asyncio.run(run())


def publish_events(url: str, events: list[dict[str, Any]], received_at: dt.datetime) -> None:
    """One bus message per type holding ``events``, stamped ``received_at``."""
    lines = bus_lines(events, received_at)
    publish_raw(url, [(subject(name), payload) for name, payload in lines.items()])


def publish_failed(url: str, reason: str, n: int = 1) -> list[str]:
    ids = [f"failed-{uuid.uuid4()}" for _ in range(n)]
    records = [
        FailedEvent(
            received_at=dt.datetime.now(dt.UTC),
            reason=reason,
            status=200,
            gateway="gw-test",
            index=i,
            id=event_id,
            source="/tests",
            type=SKIPPED,
        )
        for i, event_id in enumerate(ids)
    ]
    publish_raw(url, [(FAILED_SUBJECT + ".event", msgspec.json.Encoder().encode_lines(records))])
    return ids


def keys_of_events(events: Iterable[dict[str, Any]]) -> list[Key]:
    return [(e["source"], e["id"]) for e in events]


# -------------------------------------------------------------------- the lake


def lake_table(lake: Path, type_name: str, columns: list[str] | None = None) -> pa.Table:
    """The type's rows, read by pyarrow as a hive-partitioned dataset."""
    root = lake / type_name
    if not root.exists():
        return pa.table({"source": pa.array([], pa.string()), "id": pa.array([], pa.string())})
    return relisting(
        lambda: ds.dataset(root, format="parquet", partitioning="hive").to_table(columns=columns)
    )


def relisting(read: Callable[[], T]) -> T:
    """``read()`` again when a file listed is gone: a running loader's compaction
    swapped its bucket folder in between, and a reader lists again (compact.py)."""
    for _ in range(9):
        try:
            return read()
        except (FileNotFoundError, duckdb.IOException):
            time.sleep(0.1)
    return read()


def duck(sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect() as con:
        con.sql("SET TimeZone = 'UTC'")
        return con.sql(sql).fetchall()


def duck_glob(lake: Path, type_name: str) -> str:
    return f"read_parquet('{lake}/{type_name}/**/*.parquet', hive_partitioning=true)"


def lake_keys(lake: Path, type_name: str) -> list[Key]:
    """Every (source, id) in the lake, once per row (pyarrow)."""
    table = lake_table(lake, type_name, ["source", "id"])
    return list(
        zip(table.column("source").to_pylist(), table.column("id").to_pylist(), strict=True)
    )


def lake_keys_duckdb(lake: Path, type_name: str) -> list[Key]:
    if not any((lake / type_name).rglob("part-*.parquet")):
        return []
    query = f"select source, id from {duck_glob(lake, type_name)}"  # noqa: S608 - a test path
    return [(s, i) for s, i in relisting(lambda: duck(query))]


def assert_exactly_once(
    found: list[Key], expected: Iterable[Key], maybe: Iterable[Key] = ()
) -> None:
    """Each of ``expected`` (acknowledged) once; nothing else but, at most once each,
    events of ``maybe``: sent in requests whose answer was not 200 (a 503 after a
    publish timeout) or never came, which may have landed all the same."""
    counts = Counter(found)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} events more than once, e.g. {list(twice.items())[:3]}"
    want = set(expected)
    missing, extra = want - set(counts), set(counts) - want - set(maybe)
    assert not missing, f"{len(missing)} acknowledged events missing, e.g. {list(missing)[:3]}"
    assert not extra, f"{len(extra)} events never sent, e.g. {list(extra)[:3]}"


def bucket_folders(lake: Path, type_name: str) -> list[Path]:
    return sorted(p for p in (lake / type_name).glob("date=*/hour=*/minute=*") if p.is_dir())


def folder_of(lake: Path, type_name: str, start: dt.datetime) -> Path:
    return lake / type_name / f"date={start:%Y-%m-%d}" / f"hour={start:%H}" / f"minute={start:%M}"


def manifest_at(folder: Path) -> Manifest | None:
    path = folder / "_SUCCESS.json"
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=Manifest)


def manifests(lake: Path) -> dict[Path, Manifest]:
    """Every bucket's manifest (not a compaction's staging folder: ``_compacting``)."""
    out = {}
    for path in sorted(lake.glob("*/**/_SUCCESS.json")):
        if path.relative_to(lake).parts[0] == "_compacting":
            continue
        out[path.parent] = msgspec.json.decode(path.read_bytes(), type=Manifest)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_manifest_matches(folder: Path, manifest: Manifest) -> None:
    """The files listed are the part files present, with their rows and sha256.

    Checked again from the folder's new manifest if a running loader's compaction
    swapped the folder meanwhile (the reader's rule in compact.py: list again)."""
    for _ in range(10):
        try:
            _assert_manifest_matches(folder, manifest)
            return
        except (AssertionError, FileNotFoundError):
            now = manifest_at(folder)
            if now is None or now == manifest:
                raise
            manifest = now
    _assert_manifest_matches(folder, manifest)


def _assert_manifest_matches(folder: Path, manifest: Manifest) -> None:
    present = sorted(p.name for p in folder.glob("part-*.parquet"))  # what readers read
    listed = sorted(f.name for f in manifest.files)
    assert listed == present, f"{folder}: manifest lists {listed}, folder holds {present}"
    for entry in manifest.files:
        path = folder / entry.name
        assert entry.rows == pq.ParquetFile(path).metadata.num_rows, (folder, entry)
        assert entry.sha256 == sha256(path), (folder, entry)
        assert entry.bytes == path.stat().st_size, (folder, entry)
    assert manifest.count == sum(f.rows for f in manifest.files), folder
    start = dt.datetime.strptime(
        "{date} {hour}:{minute}".format(**dict(part.split("=", 1) for part in folder.parts[-3:])),
        "%Y-%m-%d %H:%M",
    ).replace(tzinfo=dt.UTC)
    assert manifest.bucket_start == start, folder
    assert manifest.bucket_end == start + dt.timedelta(minutes=1), folder
    assert manifest.closed_at >= manifest.bucket_end, folder
    # Rows are this bucket's, or late ones (received before it) counted as skewed.
    received = [
        t
        for path in sorted(folder.glob("part-*.parquet"))
        for t in pq.read_table(path, columns=["received_at"]).column("received_at").to_pylist()
    ]
    assert all(t < manifest.bucket_end for t in received), folder
    assert sum(t < start for t in received) == manifest.skewed, folder


def assert_all_manifests_match(lake: Path) -> dict[Path, Manifest]:
    found = manifests(lake)
    for folder, manifest in found.items():
        assert_manifest_matches(folder, manifest)
    return found


def tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".tmp-*"))


# -------------------------------------------------------------------- traffic


class Sender(threading.Thread):
    """Posts batches back to back through a gateway; records what was acknowledged.

    ``base`` may be several gateways: a batch that got no 200 is re-sent to the
    next one.  ``retry``: a batch is re-sent (the same ids) until one gateway
    acknowledges it or the sender is told to finish, as a producer would; so a
    copy of an event that landed without an answer is re-sent, and must be
    deduplicated."""

    def __init__(
        self,
        base: str | list[str],
        make: Callable[[], dict[str, Any]] = skipped,
        batch: int = 20,
        pause: float = 0.02,
        *,
        retry: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.bases = [base] if isinstance(base, str) else list(base)
        self.make, self.batch, self.pause, self.retry = make, batch, pause, retry
        self.acked: list[Key] = []
        self.unanswered: list[Key] = []  # not acknowledged, but may have landed
        self.halt = threading.Event()
        self.statuses: Counter[int] = Counter()

    def run(self) -> None:
        clients = [httpx.Client(base_url=base, timeout=10) for base in self.bases]
        turn = 0
        events: list[dict[str, Any]] = []
        try:
            while not self.halt.is_set():
                if not events:
                    events = [self.make() for _ in range(self.batch)]
                client = clients[turn % len(clients)]
                try:
                    r = client.post(
                        "/v1/events", content=msgspec.json.encode(events), headers=BATCH
                    )
                except httpx.HTTPError:
                    r = None
                if r is not None:
                    self.statuses[r.status_code] += 1
                if r is not None and r.status_code == 200:
                    assert r.json()["rejected"] == []
                    self.acked.extend(keys_of_events(events))
                    events = []
                else:
                    turn += 1  # the next gateway
                    if not self.retry:
                        self.unanswered.extend(keys_of_events(events))
                        events = []
                time.sleep(self.pause)
            self.unanswered.extend(keys_of_events(events))  # the batch in flight at the end
        finally:
            for client in clients:
                client.close()

    def wait_for(self, n: int, timeout: float = 20) -> None:
        wait_until(lambda: len(self.acked) >= n, timeout, f"{n} acknowledged events")

    def finish(self) -> list[Key]:
        self.halt.set()
        self.join(15)
        assert not self.is_alive()
        return list(self.acked)


# ------------------------------------------------------------------ ownership

STREAM = stream_name(SKIPPED)


def _on_bus(url: str, work: Callable[[Any], Any], patience_s: float = 30.0) -> Any:
    """``work(js)`` on the bus, asked again while it does not answer (a cluster
    electing a leader after a node kill takes seconds)."""

    async def go() -> Any:
        nc = await connect(url, name="test")
        try:
            deadline = time.monotonic() + patience_s
            while True:
                try:
                    return await work(nc.jetstream(timeout=5))
                except BusUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    return asyncio.run(go())


def owner_pid(url: str) -> int | None:
    """The pid of the loader holding the test stream's lease, None if none does."""
    owners, _ = _on_bus(url, read_loaders)
    lease = owners.get(STREAM)
    return lease.pid if lease else None


def record_of(url: str) -> tuple[int, int]:
    """(epoch, committed_seq) of the test stream's checkpoint record."""

    async def read(js: Any) -> tuple[int, int]:
        record, _ = await read_record(js, STREAM)
        assert record is not None
        saved = msgspec.json.decode(record.body, type=Saved)
        return record.epoch, saved.state.committed_seq

    result: tuple[int, int] = _on_bus(url, read)
    return result
