"""The analytics SDKs' own Python clients against a real gateway, loader and nats-server.

segment-analytics-python, rudder-sdk-python and snowplow-tracker each send 1,200
events of several kinds through their own batching, gzip and retries, while the
gateway is killed (-9) in the middle and restarted on its port: the SDK resends
what was not answered, and the lake (read with DuckDB) holds every event exactly
once, by the id the SDK stamped (``messageId``, ``eid``).  How the clients behave
is in docs/research/analytics-sdks.md.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import segment.analytics
from rudderstack.analytics import Client as RudderClient
from snowplow_tracker import (
    Emitter,
    PageView,
    ScreenView,
    SelfDescribing,
    SelfDescribingJson,
    StructuredEvent,
    Subject,
    Tracker,
)

from hourglass.replay import failed_events, replay
from tests.chaos.conftest import duck, wait_until
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import GatewayProcess, LoaderProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

KEYS = """
[keys]
"wk-seg-5b1f90" = { name = "website", types = ["segment.*", "web.SongSkipped"] }
"wk-rud-77aa02" = { name = "backend", types = ["segment.*"] }
"""
EVENTS = 1200
KILL_AT = 500  # events emitted before the gateway is killed
OUTAGE_S = 1.0
SKIP_SCHEMA = {
    "type": "record",
    "name": "SongSkipped",
    "namespace": "web",
    "hourglass.segment_event": "Song Skipped",
    "fields": [
        {"name": "track_id", "type": "string"},
        {"name": "position_ms", "type": "int"},
    ],
}


@pytest.fixture
def stack(
    start_gateway: StartGateway, start_loader: StartLoader, tmp_path: Path
) -> tuple[GatewayProcess, LoaderProcess]:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "SongSkipped.avsc").write_text(json.dumps(SKIP_SCHEMA))
    common: dict[str, Any] = {
        "segment": True,
        "snowplow": True,
        "schemas": str(schemas),
        "bucket": "1m",
        "flush_interval_s": 0.5,
        "marker_interval_s": 0.5,
    }
    gw = start_gateway(api_keys=str(keys), **common)  # it creates the streams
    return gw, start_loader(**common)


def _lake(loader: LoaderProcess, type_name: str, columns: str = "id") -> list[tuple[Any, ...]]:
    # Part files only: a staged .tmp- file may be renamed while DuckDB opens it.
    if not any((loader.lake / type_name).rglob("part-*.parquet")):
        return []
    parts = f"read_parquet('{loader.lake}/{type_name}/**/part-*.parquet')"
    return list(duck(f"select {columns} from {parts}"))  # noqa: S608


def _ids(loader: LoaderProcess, *types: str) -> list[str]:
    return [i for t in types for (i,) in _lake(loader, t)]


def _with_outage(gw: GatewayProcess, emit: Callable[[int], str]) -> tuple[list[str], int]:
    """Emit EVENTS events, killing the gateway after KILL_AT and restarting it
    OUTAGE_S later while emitting goes on; the ids, and how many were emitted
    while it was down."""
    ids: list[str] = []
    down = threading.Event()
    during = 0
    for i in range(EVENTS):
        if i == KILL_AT:
            gw.kill()
            down.set()
            restart = threading.Timer(OUTAGE_S, lambda: (gw.start(), down.clear()))
            restart.start()
        ids.append(emit(i))
        during += down.is_set()
        time.sleep(0.002)
    restart.join()
    return ids, during


def _exactly_once(loader: LoaderProcess, expected: list[str], *types: str) -> None:
    assert len(set(expected)) == len(expected) == EVENTS
    wait_until(
        lambda: len(_ids(loader, *types)) >= len(expected),
        60,
        f"{len(expected)} events in {types}",
    )
    time.sleep(1.5)  # a few more flushes: a duplicate would show now
    got = _ids(loader, *types)
    assert sorted(got) == sorted(expected), (len(got), len(set(got)), len(expected))


KINDS = ("track", "identify", "page", "screen", "group")


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_segment_api_sdks_through_a_gateway_crash(
    stack: tuple[GatewayProcess, LoaderProcess], sdk: str
) -> None:
    gw, loader = stack
    errors: list[Any] = []
    key, source = ("wk-seg-5b1f90", "website") if sdk == "segment" else ("wk-rud-77aa02", "backend")
    options = {"host": gw.base, "upload_interval": 0.05, "max_retries": 10}
    client: Any
    if sdk == "segment":
        client = segment.analytics.Client(key, on_error=lambda e, b: errors.append(e), **options)
    else:  # gzip is its default
        client = RudderClient(key, on_error=lambda e, b: errors.append(e), **options)
    kinds: dict[str, list[str]] = {k: [] for k in KINDS}

    def emit(i: int) -> str:
        kind = KINDS[i % len(KINDS)]
        user = f"user-{i % 97}"
        if kind == "track":
            ok, msg = client.track(user, "Clicked", {"n": i, "label": f"x{i}"})
        elif kind == "identify":
            ok, msg = client.identify(user, {"plan": "pro", "n": i})
        elif kind == "page":
            ok, msg = client.page(user, "Docs", f"Page {i}", {"path": f"/p/{i}"})
        elif kind == "screen":
            ok, msg = client.screen(user, "App", f"Screen {i}", {"n": i})
        else:
            ok, msg = client.group(user, f"group-{i % 5}", {"n": i})
        assert ok, msg
        kinds[kind].append(msg["messageId"])
        return str(msg["messageId"])

    try:
        ids, during = _with_outage(gw, emit)
        client.flush()
    finally:
        client.join()
    assert during > 50, "events were emitted while the gateway was down"
    assert errors == [], errors
    tables = [f"segment.{k}s" if k != "identify" else "segment.identifies" for k in KINDS]
    _exactly_once(loader, ids, *tables)
    for kind, table in zip(KINDS, tables, strict=True):
        assert sorted(_ids(loader, table)) == sorted(kinds[kind])
    rows = _lake(loader, "segment.tracks", "source, userId, event, properties, context")
    assert {r[0] for r in rows} == {source}  # the key's name, never the key
    assert all(r[1].startswith("user-") and r[2] == "Clicked" for r in rows)
    assert all(json.loads(r[3])["label"] == f"x{json.loads(r[3])['n']}" for r in rows)
    library = {json.loads(r[4])["library"]["name"] for r in rows}
    assert library == {"analytics-python"}  # both SDKs name themselves so


def test_snowplow_tracker_through_a_gateway_crash(
    stack: tuple[GatewayProcess, LoaderProcess],
) -> None:
    gw, loader = stack
    failures: list[int] = []
    emitter = Emitter(
        gw.base,
        batch_size=10,
        request_timeout=5,
        max_retry_delay_seconds=2,
        on_failure=lambda sent, unsent: failures.append(len(unsent)),
    )
    tracker = Tracker("hg-test", emitter, subject=Subject().set_user_id("u-1"), app_id="shop")
    skip = "iglu:com.acme/skip/jsonschema/1-0-0"

    def emit(i: int) -> str:
        kind = i % 4
        if kind == 0:
            event: Any = StructuredEvent("player", "skip", label=f"t-{i}", value=i)
        elif kind == 1:
            event = PageView(f"https://shop.test/p/{i}", page_title=f"Page {i}")
        elif kind == 2:
            event = SelfDescribing(SelfDescribingJson(skip, {"track": f"t-{i}"}))
        else:
            event = ScreenView(str(uuid.uuid4()), f"Screen {i}")
        eid = tracker.track(event)
        assert eid is not None
        return str(eid)

    ids, during = _with_outage(gw, emit)
    assert during > 50, "events were emitted while the gateway was down"
    assert failures, "the tracker saw the gateway down (and resent by itself)"
    deadline = time.monotonic() + 60
    while len(_ids(loader, "snowplow.events")) < EVENTS and time.monotonic() < deadline:
        tracker.flush()  # a no-op while the tracker's own retry timer runs
        time.sleep(0.5)
    _exactly_once(loader, ids, "snowplow.events")
    rows = _lake(loader, "snowplow.events", "source, event, user_id, se_category, unstruct_event")
    assert {r[0] for r in rows} == {"shop"}
    assert {r[1] for r in rows} == {"struct", "page_view", "unstruct"}  # screens are unstruct
    assert {r[2] for r in rows} == {"u-1"}
    assert {r[3] for r in rows if r[1] == "struct"} == {"player"}
    assert all(json.loads(r[4])["data"]["schema"] for r in rows if r[1] == "unstruct")


def test_a_track_claimed_by_a_schema_lands_in_both_tables(
    stack: tuple[GatewayProcess, LoaderProcess],
) -> None:
    gw, loader = stack
    client = segment.analytics.Client("wk-seg-5b1f90", host=gw.base, upload_interval=0.05)
    try:
        sent = [
            client.track("u-9", "Song Skipped", {"track_id": f"t-{i}", "position_ms": i})[1]
            for i in range(20)
        ]
        bad = client.track("u-9", "Song Skipped", {"track_id": "t-x"})[1]  # no position_ms
        client.flush()
    finally:
        client.join()
    ids = [m["messageId"] for m in sent]
    wait_until(lambda: len(_ids(loader, "web.SongSkipped")) >= 20, 30, "the typed rows")
    wait_until(lambda: len(_ids(loader, "segment.tracks")) >= 21, 30, "the tracks rows")
    assert sorted(_ids(loader, "segment.tracks")) == sorted([*ids, bad["messageId"]])
    typed = _lake(loader, "web.SongSkipped", "id, source, track_id, position_ms")
    assert sorted(typed) == sorted(
        (m["messageId"], "website", m["properties"]["track_id"], i) for i, m in enumerate(sent)
    )


@pytest.fixture(autouse=True)
def _no_stray_clients() -> Iterator[None]:
    """The SDKs' module-level clients are never used here (they register atexit
    joins); only clients built by the tests, each joined."""
    yield
    assert segment.analytics.default_client is None


def test_replay_leaves_a_rejected_segment_call_alone(
    stack: tuple[GatewayProcess, LoaderProcess],
) -> None:
    gw, loader = stack
    client = segment.analytics.Client("wk-seg-5b1f90", host=gw.base, upload_interval=0.05)
    try:
        client.track("u-9", "Song Skipped", {"track_id": "t-x"})  # no position_ms
        client.flush()
    finally:
        client.join()
    wait_until(lambda: failed_events(loader.lake, "web.SongSkipped") != [], 30, "the rejected copy")
    result = replay(loader.lake, "web.SongSkipped", gw.base)
    assert (result.found, result.not_cloudevents, result.accepted, result.rejected) == (1, 1, 0, [])
