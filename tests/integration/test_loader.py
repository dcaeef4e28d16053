"""The loader end to end: real nats-server, gateways and loaders, the lake read back
with DuckDB and pyarrow.

Minute buckets keep it quick.  Only the bucket-closing tests wait for a minute
boundary, all of them for the same one (two buses side by side); a backlog
published straight to the bus with earlier ``received_at`` stamps (as a gateway
would have, minutes ago) gives closed buckets without waiting for them.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pyarrow.parquet as pq
import pytest

from hourglass.demo import demo_batch
from hourglass.lake.failed import FAILED_DIR
from hourglass.lake.manifest import Manifest
from hourglass.schemas.parse import parse_schema
from tests.chaos.conftest import (
    REGISTRY,
    SKIPPED,
    Key,
    Sender,
    assert_all_manifests_match,
    assert_exactly_once,
    duck_glob,
    folder_of,
    keys_of_events,
    lake_keys,
    lake_keys_duckdb,
    lake_table,
    manifest_at,
    minute_start,
    publish_events,
    relisting,
    tmp_files,
    wait_until,
)
from tests.groups import TIMING
from tests.integration.conftest import StartGateway, StartLoader, base_settings
from tests.integration.support import (
    BATCH,
    GatewayProcess,
    LoaderProcess,
    NatsServer,
    event,
    post,
    skipped,
)
from tests.unit.loader.avro_check import check_arrow_type, duckdb_type, same_value

# the minute tests' fixture waits for a boundary
pytestmark = [pytest.mark.timeout(180), TIMING]

FAST: dict[str, Any] = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 3.0,
    "flush_interval_s": 0.5,
}
MINUTE = dt.timedelta(minutes=1)
TYPE_NAMES = sorted(s.type_name for s in REGISTRY)
ENVELOPE = ["id", "source", "type", "time", "received_at"]


class Stack:
    """One bus with its gateways and loaders under ``root``; stopped by ``exit``."""

    def __init__(self, root: Path, exit: ExitStack, **settings: Any) -> None:
        self.root, self.exit, self.settings = root, exit, settings
        self.nats = NatsServer(root / "bus")
        exit.callback(self.nats.stop)
        self.nats.start()
        self.count = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def lake(self) -> Path:
        return self.data / "lake"

    def _settings(self, over: dict[str, Any]) -> Any:
        return base_settings(self.nats, self.root, **{**self.settings, **over})

    def gateway(self, **over: Any) -> GatewayProcess:
        self.count += 1
        gw = GatewayProcess(self._settings(over), log_path=self.root / f"gw{self.count}.log")
        self.exit.callback(gw.stop)
        gw.start()
        return gw

    def loader(self, **over: Any) -> LoaderProcess:
        self.count += 1
        loader = LoaderProcess(self._settings(over), log_path=self.root / f"ld{self.count}.log")
        self.exit.callback(loader.stop)
        loader.start()
        return loader


def _duck_relation(
    lake: Path, type_name: str
) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    def read() -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        with duckdb.connect() as con:
            con.sql("SET TimeZone = 'UTC'")
            rel = con.sql(f"select * from {duck_glob(lake, type_name)}")  # noqa: S608 - test path
            return rel.columns, [str(t) for t in rel.types], rel.fetchall()

    return relisting(read)


# ---------------------------------------------------------- one shared stack


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, GatewayProcess]]:
    with ExitStack() as exit:
        stack = Stack(tmp_path_factory.mktemp("shared"), exit, **FAST)
        gw = stack.gateway()
        stack.loader()
        yield stack, gw


def test_every_demo_type_reads_back_typed_with_duckdb_and_pyarrow(
    shared: tuple[Stack, GatewayProcess],
) -> None:
    stack, gw = shared
    sent = demo_batch(REGISTRY, random.Random(11), 250, "/types")
    assert post(gw.base, sent).json() == {"accepted": 250, "rejected": []}
    by_type = {name: [e for e in sent if e["type"] == name] for name in TYPE_NAMES}
    assert all(by_type.values()), "the demo batch misses a type"
    for name, events in by_type.items():
        wait_until(
            lambda name=name, events=events: len(lake_keys(stack.lake, name)) == len(events),
            15,
            f"{name} in the lake",
        )
    for schema in REGISTRY:
        name = schema.type_name
        record = parse_schema(schema.avro)
        fields = [f.name for f in record.fields]
        events = {e["id"]: e for e in by_type[name]}

        # pyarrow: a hive-partitioned dataset, typed as the Avro schema says.
        table = lake_table(stack.lake, name)
        assert table.column_names == ENVELOPE + fields + ["date", "hour", "minute"], name
        for f in record.fields:
            check_arrow_type(f.type, table.schema.field(f.name).type, f"{name}.{f.name}")
        for column in ("time", "received_at"):
            assert str(table.schema.field(column).type) == "timestamp[us, tz=UTC]"
        rows = table.to_pylist()
        assert sorted(r["id"] for r in rows) == sorted(events)
        for row in rows:
            e = events[row["id"]]
            assert (row["source"], row["type"]) == ("/types", name)
            same_value(record, e["data"], row, f"pyarrow {name}")
            received = row["received_at"]
            assert (row["date"], row["hour"], row["minute"]) == (
                f"{received:%Y-%m-%d}",
                received.hour,
                received.minute,
            )

        # DuckDB: read_parquet over the glob, hive partitioning on.
        columns, types, tuples = _duck_relation(stack.lake, name)
        assert columns == ENVELOPE + fields + ["date", "hour", "minute"], name
        want = ["VARCHAR"] * 3 + ["TIMESTAMP WITH TIME ZONE"] * 2
        want += [duckdb_type(f.type) for f in record.fields]
        assert types[: len(want)] == want, name
        assert len(tuples) == len(events)
        for values in tuples:
            row = dict(zip(columns, values, strict=True))
            same_value(record, events[row["id"]]["data"], row, f"duckdb {name}")


def test_failed_events_land_under_failed_with_their_reason(
    shared: tuple[Stack, GatewayProcess],
) -> None:
    stack, gw = shared
    good = skipped()
    wrong_type = skipped()
    wrong_type["data"]["position_ms"] = "soon"
    unknown = event("music.NoSuchType", {"x": 1})
    response = post(gw.base, [good, wrong_type, unknown])
    assert response.status_code == 200 and response.json()["accepted"] == 1
    garbage = httpx.post(gw.base + "/v1/events", content=b"[{not json", headers=BATCH)
    assert garbage.status_code == 400

    def failed() -> list[tuple[Any, ...]]:
        with duckdb.connect() as con:
            query = (
                "select id, status, reason, event, body from "  # noqa: S608 - a test path
                f"{duck_glob(stack.lake, FAILED_DIR)} order by status, index"
            )
            return con.sql(query).fetchall()

    rows = wait_until(lambda: len(failed()) == 3 and failed(), 15, "three failed records")
    (id1, st1, why1, ev1, _), (id2, st2, why2, _, _), (_, st3, why3, ev3, body3) = rows
    assert (id1, st1) == (wrong_type["id"], 200) and "position_ms" in why1
    assert ev1 is not None and wrong_type["id"] in ev1
    assert (id2, st2) == (unknown["id"], 200) and "music.NoSuchType" in why2
    assert (st3, ev3, body3) == (400, None, b"[{not json") and why3
    wait_until(lambda: (good["source"], good["id"]) in lake_keys(stack.lake, SKIPPED), 10, "good")


@pytest.mark.parametrize("where", ["id", "source", "type", "data"])
def test_invalid_utf8_lands_under_failed_as_bytes_never_quarantined(
    shared: tuple[Stack, GatewayProcess], where: str
) -> None:
    """An event that is not UTF-8 is rejected alone, kept as bytes beside its reason,
    and the loader lands that record in ``lake/_failed`` like any other."""
    stack, gw = shared
    good = skipped(source=f"/utf8-good-{where}")
    bad = skipped(id=f"utf8-{where}", source=f"/utf8-{where}")
    bad["data"]["track_id"] = "t-utf8"
    value = {"id": bad["id"], "source": bad["source"], "type": SKIPPED, "data": "t-utf8"}[where]
    quoted = msgspec.json.encode(value)
    bad_bytes = msgspec.json.encode(bad).replace(quoted, quoted[:2] + b"\xc3(\xff" + quoted[2:])
    body = b"[" + msgspec.json.encode(good) + b"," + bad_bytes + b"]"
    response = httpx.post(gw.base + "/v1/events", content=body, headers=BATCH, timeout=30)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["accepted"] == 1 and [r["index"] for r in reply["rejected"]] == [1], reply
    reason = reply["rejected"][0]["reason"]
    assert "invalid UTF-8" in reason, reason

    def rows() -> list[tuple[Any, ...]]:
        with duckdb.connect() as con:
            query = (
                "select index, status, reason, event, body from "  # noqa: S608 - a test path
                f"{duck_glob(stack.lake, FAILED_DIR)} where body = ?"
            )
            return con.execute(query, [bad_bytes]).fetchall()

    [(index, status, why, event_text, kept)] = wait_until(rows, 15, "the record in _failed")
    assert (index, status, why, event_text, kept) == (1, 200, reason, None, bad_bytes)
    wait_until(lambda: (good["source"], good["id"]) in lake_keys(stack.lake, SKIPPED), 10, "good")
    quarantine = stack.data / "loader" / "quarantine"
    assert not quarantine.exists() or not any(quarantine.rglob("*.ndjson")), "quarantined"


def test_events_differing_only_in_where_a_nul_sits_are_not_duplicates(
    shared: tuple[Stack, GatewayProcess],
) -> None:
    """(source, id) identifies an event.  If the gateway acknowledges both of these,
    both are distinct events and must both reach the lake."""
    stack, gw = shared
    first = skipped(source="/nul\x00x", id="y")
    second = skipped(source="/nul", id="x\x00y")
    response = post(gw.base, [first, second]).json()
    acked = [
        e
        for i, e in enumerate((first, second))
        if i not in {r["index"] for r in response["rejected"]}
    ]
    after = skipped(source="/nul-done")  # loaded after both: then nothing is pending
    assert post(gw.base, [after]).json()["accepted"] == 1
    wait_for_keys(stack.lake, keys_of_events([after]), "the batch after")
    found = [k for k in lake_keys(stack.lake, SKIPPED) if k[0].startswith("/nul")]
    assert_exactly_once(found, keys_of_events(acked + [after]))


def wait_for_keys(lake: Path, expected: list[Key], what: str, timeout: float = 15) -> None:
    def missing() -> set[Key]:
        return set(expected) - set(lake_keys(lake, SKIPPED))

    try:
        wait_until(lambda: not missing(), timeout, what)
    except AssertionError as exc:
        gone = missing()
        raise AssertionError(f"{exc}: {len(gone)} missing, e.g. {sorted(gone)[:3]}") from None


# ---------------------------------------------------------------- duplicates


def test_duplicates_appear_once_across_requests_buckets_and_restarts(
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    tmp_path: Path,
) -> None:
    lake = tmp_path / "data" / "lake"
    gw = start_gateway(**FAST)
    # A backlog from three minutes ago: its bucket is closed by the time of the re-send.
    earlier = [skipped(source="/dup") for _ in range(10)]
    old_bucket = minute_start(time.time()) - 3 * MINUTE
    publish_events(nats_server.url, earlier, old_bucket + dt.timedelta(seconds=5))
    loader = start_loader(**FAST)

    a = [skipped(source="/dup") for _ in range(30)]
    assert post(gw.base, a + a[:5]).json()["accepted"] == 35  # duplicates in one request
    assert post(gw.base, a[5:10]).json()["accepted"] == 5  # a later request
    assert post(gw.base, earlier).json()["accepted"] == 10  # a later bucket
    other_source = dict(a[0], source="/dup-elsewhere")  # same id, another source: new
    assert post(gw.base, [other_source]).json()["accepted"] == 1
    expected = keys_of_events(earlier + a + [other_source])
    wait_for_keys(lake, expected, "first round")
    wait_until(
        lambda: manifest_at(folder_of(lake, SKIPPED, old_bucket)), 10, "the old bucket closed"
    )

    loader.stop()  # a clean restart...
    loader = start_loader(**FAST)
    b = [skipped(source="/dup") for _ in range(5)]
    assert post(gw.base, a + b).json()["accepted"] == 35
    expected += keys_of_events(b)
    wait_for_keys(lake, expected, "second round")

    loader.kill()  # ...and a kill -9
    loader = start_loader(**FAST)
    c = [skipped(source="/dup") for _ in range(5)]
    assert post(gw.base, earlier + a + b + c).json()["accepted"] == 50
    expected += keys_of_events(c)
    wait_for_keys(lake, expected, "third round")
    time.sleep(1.5)  # three more flushes: a late copy would show now
    assert_exactly_once(lake_keys(lake, SKIPPED), expected)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), expected)
    old = manifest_at(folder_of(lake, SKIPPED, old_bucket))
    assert old is not None and (old.count, old.duplicates_dropped) == (10, 0)
    assert_all_manifests_match(lake)


# ------------------------------------------------------ closing, one boundary


@dataclass
class MinuteRun:
    """Two buses through the same minute boundary ``end``.

    A: lease 3 s, gateways gw1 (steady load) and gw2 (a few events, then kill -9
    1.5 s before ``end``); a closed backlog, then a late event for a closed bucket.
    B: lease 12 s, gateways gw3 (a few events then silence) and gw4 (SIGTERM 1.5 s
    before ``end``).
    """

    end: dt.datetime
    a: Stack
    b: Stack
    lease_a: float
    lease_b: float
    closed: dict[tuple[str, str], tuple[Manifest, float]] = field(default_factory=dict)
    acked: list[Key] = field(default_factory=list)
    unanswered: list[Key] = field(default_factory=list)  # steady events without a 200
    stopped_events: int = 0
    dups_a: int = 0
    dups_b: int = 0
    sent_b: int = 0
    old: Key = ("", "")
    late: Key = ("", "")
    backlog_buckets: list[dt.datetime] = field(default_factory=list)
    before_late: dict[str, bytes] = field(default_factory=dict)
    after_late: dict[str, bytes] = field(default_factory=dict)


def _snapshot(folders: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.iterdir())}


def _run_minute(root: Path, exit: ExitStack) -> MinuteRun:
    if 60 - time.time() % 60 < 12:  # too close to the boundary to set up before it
        time.sleep(60 - time.time() % 60 + 0.1)
    start = minute_start(time.time())
    run = MinuteRun(
        end=start + MINUTE,
        a=Stack(root / "a", exit, **FAST),
        b=Stack(root / "b", exit, **{**FAST, "lease_ttl_s": 12.0}),
        lease_a=3.0,
        lease_b=12.0,
    )
    a, b = run.a, run.b
    gw1, gw2 = a.gateway(), a.gateway()
    gw3, gw4 = b.gateway(), b.gateway()
    # A backlog event five minutes old: the loader starts closing there.
    old = skipped(source="/old")
    run.old = (old["source"], old["id"])
    run.backlog_buckets = [start - i * MINUTE for i in range(5, 0, -1)]
    publish_events(a.nats.url, [old], run.backlog_buckets[0] + dt.timedelta(seconds=10))
    a.loader()
    b.loader()

    stopped = demo_batch(REGISTRY, random.Random(3), 60, "/stop")
    stopped = [e for e in stopped if e["type"] == "music.PlaybackStopped"]
    x = [skipped(source="/x") for _ in range(10)]
    y = [skipped(source="/y") for _ in range(5)]
    folders = [folder_of(a.lake, SKIPPED, s) for s in run.backlog_buckets]
    sender = Sender(gw1.base, make=lambda: skipped(source="/steady"), batch=10, pause=0.05)
    sender.start()
    try:
        assert post(gw2.base, stopped).json()["rejected"] == []
        run.stopped_events = len(stopped)
        assert post(gw1.base, x).json()["accepted"] == 10
        assert post(gw2.base, x + [old]).json()["accepted"] == 11  # 10 + 1 duplicates
        run.dups_a = 11
        assert post(gw3.base, y).json()["accepted"] == 5
        assert post(gw4.base, y).json()["accepted"] == 5
        run.sent_b, run.dups_b = 5, 5
        # The backlog's buckets close; then an event stamped in one of them arrives.
        wait_until(lambda: all(manifest_at(f) for f in folders), 15, "backlog buckets closed")
        run.before_late = _snapshot(folders)
        late = skipped(source="/late")
        run.late = (late["source"], late["id"])
        publish_events(a.nats.url, [late], run.backlog_buckets[1] + dt.timedelta(seconds=30))

        left = run.end.timestamp() - time.time()
        assert left > 2, f"set-up took too long ({left:.1f}s left in the minute)"
        time.sleep(left - 1.5)
        gw2.kill()  # no deregistration: its lease must expire
        gw4.stop()  # clean: deregisters
        _watch_close(run)
    finally:
        run.acked = sender.finish() + keys_of_events(x)
        run.unanswered = sender.unanswered
    wait_until(
        lambda: set(lake_keys(a.lake, SKIPPED)) >= set(run.acked), 15, "every acked event loaded"
    )
    run.after_late = _snapshot(folders)
    return run


def _watch_close(run: MinuteRun) -> None:
    """Record when each type's bucket ending at ``run.end`` gets its manifest."""
    bucket = run.end - MINUTE
    deadline = run.end.timestamp() + 60
    todo = {(side, name) for side in ("a", "b") for name in TYPE_NAMES}
    while todo and time.time() < deadline:
        for side, name in sorted(todo):
            stack = run.a if side == "a" else run.b
            manifest = manifest_at(folder_of(stack.lake, name, bucket))
            if manifest is not None:
                run.closed[side, name] = (manifest, time.time())
                todo.discard((side, name))
        time.sleep(0.05)


@pytest.fixture(scope="module")
def minute(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinuteRun]:
    with ExitStack() as exit:
        yield _run_minute(tmp_path_factory.mktemp("minute"), exit)


def _delays(run: MinuteRun, side: str) -> dict[str, float]:
    out = {}
    for name in TYPE_NAMES:
        assert (side, name) in run.closed, f"{side}: {name} not closed within 60 s of its end"
        manifest, _ = run.closed[side, name]
        out[name] = (manifest.closed_at - run.end).total_seconds()
    return out


def test_bucket_closes_under_steady_load_within_a_minute(minute: MinuteRun) -> None:
    delays = _delays(minute, "a")
    assert max(delays.values()) <= 60
    manifest, _ = minute.closed["a", SKIPPED]
    folder = folder_of(minute.a.lake, SKIPPED, minute.end - MINUTE)
    steady = [k for k in _keys_in(folder) if k[0] == "/steady"]
    assert steady and manifest.count == len(_keys_in(folder))
    assert_exactly_once(
        lake_keys(minute.a.lake, SKIPPED),
        minute.acked + [minute.old, minute.late],
        maybe=minute.unanswered,
    )
    assert_all_manifests_match(minute.a.lake)
    assert (folder / "_SUCCESS.json").exists()


def test_killed_gateway_delays_close_only_until_its_lease_expires(minute: MinuteRun) -> None:
    delays = _delays(minute, "a")
    slack = 4.0  # a marker round, a flush, a lease poll and the KV's own expiry
    late = {n: d for n, d in delays.items() if d > minute.lease_a + slack}
    assert not late, f"closed {late} s after the bucket end; lease is {minute.lease_a} s"


def test_cleanly_stopped_gateway_does_not_delay_close(minute: MinuteRun) -> None:
    delays = _delays(minute, "b")
    late = {n: d for n, d in delays.items() if d > 4.0}
    assert not late, f"closed {late} s after the end: waited for the stopped gateway's lease"


def test_idle_minute_gets_an_empty_manifest(minute: MinuteRun) -> None:
    idle = [n for n in TYPE_NAMES if n not in (SKIPPED, "music.PlaybackStopped")]
    for side in ("a", "b"):
        for name in idle + ([] if side == "a" else ["music.PlaybackStopped"]):
            manifest, _ = minute.closed[side, name]
            assert (manifest.count, manifest.files) == (0, []), (side, name)
    for start in minute.backlog_buckets[1:]:  # the backlog's empty minutes
        manifest = manifest_at(folder_of(minute.a.lake, SKIPPED, start))
        assert manifest is not None and (manifest.count, manifest.files) == (0, []), start


def test_bucket_closes_when_traffic_stops(minute: MinuteRun) -> None:
    manifest, _ = minute.closed["a", "music.PlaybackStopped"]
    assert manifest.count == minute.stopped_events
    manifest, _ = minute.closed["b", SKIPPED]
    assert (manifest.count, manifest.duplicates_dropped) == (minute.sent_b, minute.dups_b)
    assert_all_manifests_match(minute.b.lake)
    assert tmp_files(minute.b.data) == []


def test_duplicates_counted_in_the_manifest(minute: MinuteRun) -> None:
    manifest, _ = minute.closed["a", SKIPPED]
    assert manifest.duplicates_dropped == minute.dups_a
    first = manifest_at(folder_of(minute.a.lake, SKIPPED, minute.backlog_buckets[0]))
    assert first is not None and first.count == 1
    assert lake_keys(minute.a.lake, SKIPPED).count(minute.old) == 1


def test_late_event_goes_to_the_open_bucket_as_skewed(minute: MinuteRun) -> None:
    assert minute.after_late == minute.before_late, "a closed bucket changed"
    manifest, _ = minute.closed["a", SKIPPED]
    assert manifest.skewed == 1
    folder = folder_of(minute.a.lake, SKIPPED, minute.end - MINUTE)
    assert _keys_in(folder).count(minute.late) == 1
    assert lake_keys(minute.a.lake, SKIPPED).count(minute.late) == 1


def _keys_in(folder: Path) -> list[Key]:
    def read() -> list[Key]:
        out: list[Key] = []
        for path in sorted(folder.glob("part-*.parquet")):
            t = pq.read_table(path, columns=["source", "id"])
            out += zip(t.column("source").to_pylist(), t.column("id").to_pylist(), strict=True)
        return out

    return relisting(read)
