"""The analytics SDKs' own Python clients against a real gateway, bus and loader.

segment-analytics-python, rudder-sdk-python and snowplow-tracker send through
their own code (batching, gzip, retries); the lake, read back with DuckDB, holds
every event exactly once by its ``messageId``/``eid``, with the key's name as its
``source``, also when the gateway is killed (-9) while a client is sending and
started again on the same port: the client resends what got no answer, the
loader's ``(source, id)`` dedup removes what landed twice.

How the clients behave (hosts, batching, retries, their quirks):
docs/research/analytics-sdks.md.  The endpoints' answers themselves:
test_analytics_input.py.  Every client is built with ``Client(key, host=...)``
(never the module globals, whose host is read once and else falls back to the
vendor's cloud); their requests go through a :class:`CountingSession` put in
place of the module's own session, which counts answers and failures and
changes nothing else.  ``rudderstack.analytics`` calls ``load_dotenv()`` at
import: there is no ``.env`` up its tree, and ``host`` is always given.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import nats
import pytest
import requests
import rudderstack.analytics.request as rudder_request  # type: ignore[import-untyped]
import segment.analytics.request as segment_request  # type: ignore[import-untyped]
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]
from snowplow_tracker.emitters import Emitter
from snowplow_tracker.events.page_view import PageView
from snowplow_tracker.events.screen_view import ScreenView
from snowplow_tracker.events.self_describing import SelfDescribing
from snowplow_tracker.events.structured_event import StructuredEvent
from snowplow_tracker.self_describing_json import SelfDescribingJson
from snowplow_tracker.subject import Subject
from snowplow_tracker.tracker import Tracker

from hourglass.bus.jetstream import KIND, stream_name, subject
from hourglass.schemas import DEMO_SCHEMAS_DIR
from tests.chaos.conftest import assert_exactly_once, duck_glob, relisting, wait_until
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import (
    GatewayProcess,
    LoaderProcess,
    NatsServer,
    checkpoint_of,
    events_of,
    failed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(100)]

SEGMENT_KEY = "wk-seg-5b1d0c7e"
RUDDER_KEY = "wk-rud-9e7a4411"
KEYS = f"""
[keys]
"{SEGMENT_KEY}" = {{ name = "website", types = ["segment.*", "music.*"] }}
"{RUDDER_KEY}" = {{ name = "backend", types = ["segment.*"] }}
"""
NAMES = {"segment": "website", "rudder": "backend"}
SNOWPLOW_APP = "shop-web"
PIXEL_APP = "shop-pixel"
LIBRARY = {
    "segment": {"name": "analytics-python", "version": "2.4.0"},
    "rudder": {"name": "analytics-python", "version": "2.1.9"},
}
SKIP_SCHEMA = "iglu:com.acme/song_skipped/jsonschema/1-0-0"
CONTEXT_SCHEMA = "iglu:com.acme/basket/jsonschema/1-0-0"
SCREEN_SCHEMA = "iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0"
EVENTS = 1200  # per client; the kill test's gateway dies after about 200 are answered
SEGMENT_TYPES = [
    "segment.tracks",
    "segment.identifies",
    "segment.pages",
    "segment.screens",
    "segment.groups",
    "segment.aliases",
]
SNOWPLOW_TYPE = "snowplow.events"
SKIPPED = "music.SongSkipped"


# ------------------------------------------------------------------ the stack


class Stack:
    """One bus, a gateway (Segment and Snowplow on, the keys file) and a loader."""

    def __init__(
        self,
        nats_server: NatsServer,
        start_gateway: StartGateway,
        start_loader: StartLoader,
        gateway_settings: dict[str, Any],
        loader_settings: dict[str, Any],
    ) -> None:
        self.nats = nats_server
        self._start_gateway = start_gateway
        self._settings = gateway_settings
        self.gateway: GatewayProcess = start_gateway(**gateway_settings)
        self.loader: LoaderProcess = start_loader(**loader_settings)  # the gateway made its streams

    @property
    def base(self) -> str:
        return self.gateway.base

    @property
    def lake(self) -> Path:
        return Path(self.loader.settings.lake_url)

    def restart(self) -> None:
        """A new gateway on the port of the one before (which must be gone)."""
        port = self.gateway.settings.port
        self.gateway = self._start_gateway(port=port, **self._settings)


def typed_schemas(tmp_path: Path) -> str:
    """A schemas folder: the demo ``music.SongSkipped``, claiming Segment's
    "Song Skipped" tracks."""
    folder = tmp_path / "schemas"
    folder.mkdir()
    schema = json.loads((DEMO_SCHEMAS_DIR / "SongSkipped.avsc").read_text())
    schema["hourglass.segment_event"] = "Song Skipped"
    (folder / "SongSkipped.avsc").write_text(json.dumps(schema, indent=1))
    return str(folder)


@pytest.fixture
def stack(
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    tmp_path: Path,
) -> Stack:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    # Both processes get segment/snowplow: the protocols' types are in every registry.
    common = {
        "segment": True,
        "snowplow": True,
        "schemas": typed_schemas(tmp_path),
        "flush_interval_s": 0.5,
    }
    gateway = {**common, "api_keys": str(keys)}
    return Stack(nats_server, start_gateway, start_loader, gateway, common)


# -------------------------------------------------------- the clients' requests


class CountingSession(requests.Session):
    """The client's own requests, counted: the answers by status, the requests
    that got none (the gateway was gone), and what they carried in their headers."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.gzipped = 0
        self.retry_counts: list[int] = []  # Segment's X-Retry-Count headers
        self.inflight = 0
        self.refusals: list[str] = []  # the answers other than 200, with their bodies

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        headers = kwargs.get("headers") or {}
        with self.lock:
            self.inflight += 1
            if headers.get("Content-Encoding") == "gzip":
                self.gzipped += 1
            if "X-Retry-Count" in headers:
                self.retry_counts.append(int(headers["X-Retry-Count"]))
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            with self.lock:
                self.errors.append(type(exc).__name__)
            raise
        finally:
            with self.lock:
                self.inflight -= 1
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code != 200:
                self.refusals.append(f"{response.status_code} {response.text[:200]}")
        return response

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def summary(self) -> str:
        return (
            f"statuses {dict(self.statuses)}, no answer {Counter(self.errors)}, "
            f"refusals {self.refusals[:3]}"
        )


@dataclass(frozen=True)
class Sent:
    """One call a client accepted: where it must land, under which id."""

    type: str
    id: str
    source: str
    i: int
    user: str | None
    name: str | None  # the track's event, the page's/screen's name, the Snowplow kind


class Sender(Protocol):
    session: CountingSession
    source: str

    def send(self, i: int) -> Sent: ...

    def finish(self, timeout: float) -> None: ...

    def nudge(self) -> None: ...

    def close(self) -> None: ...


def bounded(what: str, call: Callable[[], object], timeout: float) -> None:
    """``call()`` in a thread of its own, which must return within ``timeout``."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    threading.Thread(target=run, daemon=True, name=what).start()
    assert done.wait(timeout), f"{what} did not return in {timeout}s"


class SegmentSender:
    """A Segment or RudderStack client (the same calls), async mode, its requests counted."""

    def __init__(
        self,
        sdk: str,
        base: str,
        session: CountingSession,
        monkeypatch: pytest.MonkeyPatch,
        *,
        max_retries: int,
    ) -> None:
        self.sdk = sdk
        self.session = session
        self.source = NAMES[sdk]
        self.errors: list[str] = []
        module, make, key = {
            "segment": (segment_request, SegmentClient, SEGMENT_KEY),
            "rudder": (rudder_request, RudderClient, RUDDER_KEY),
        }[sdk]
        monkeypatch.setattr(module, "_session", session)
        self.client = make(
            key,
            host=base,
            upload_interval=0.05,
            max_retries=max_retries,
            gzip=sdk == "rudder",  # both clients' defaults
            on_error=lambda exc, batch: self.errors.append(f"{exc!r} ({len(batch)} calls)"),
        )

    def send(self, i: int) -> Sent:
        c = self.client
        user: str | None = f"{self.sdk}-user-{i % 37}"
        name: str | None = None
        k = i % 10
        if i % 50 == 49:
            table = "segment.aliases"
            ok, msg = c.alias(previous_id=f"{self.sdk}-anon-{i}", user_id=user)
        elif k < 5:
            table, name = "segment.tracks", ("Song Played", "Ad Clicked")[k % 2]
            props = {"i": i, "sdk": self.sdk, "tags": ["a", "é"], "price": i / 4}
            ok, msg = c.track(user_id=user, event=name, properties=props)
        elif k < 7:
            table = "segment.identifies"
            ok, msg = c.identify(user_id=user, traits={"i": i, "plan": "pro"})
        elif k == 7:
            table, name = "segment.pages", "Pricing"
            props = {"i": i, "url": f"https://site.test/p/{i}"}
            ok, msg = c.page(user_id=user, category="Docs", name=name, properties=props)
        elif k == 8:
            table, name, user = "segment.screens", "Player", None
            anonymous = f"{self.sdk}-anon-{i}"
            ok, msg = c.screen(anonymous_id=anonymous, name=name, properties={"i": i})
        else:
            table = "segment.groups"
            ok, msg = c.group(user_id=user, group_id=f"g-{i % 5}", traits={"i": i, "seats": 3})
        assert ok, msg
        return Sent(table, str(msg["messageId"]), self.source, i, user, name)

    def finish(self, timeout: float) -> None:
        """flush() (every queued call sent or given up on), then join() the consumer."""
        bounded(f"{self.sdk} flush", self.client.flush, timeout)
        bounded(f"{self.sdk} join", self.client.join, 10)
        assert self.errors == [], self.errors

    def nudge(self) -> None:
        """Nothing: the consumer thread retries on its own."""

    def close(self) -> None:
        """Stop the consumer if a test failed before finish(), and drop the atexit
        join a still-retrying consumer would block the interpreter's exit on."""
        for consumer in self.client.consumers or ():
            consumer.pause()
        atexit.unregister(self.client.join)


class SnowplowSender:
    """A Snowplow tracker on a synchronous Emitter: it posts in the caller's thread
    when its buffer fills, and retries on a timer of its own (1, 2, 4 s ...)."""

    def __init__(
        self, base: str, session: CountingSession, app_id: str, method: str, batch_size: int
    ) -> None:
        self.session = session
        self.source = app_id
        self.emitter = Emitter(
            base,
            method=method,  # type: ignore[arg-type]
            batch_size=batch_size,
            request_timeout=5,  # None: a stalled gateway would hang the caller
            session=session,
        )
        self.namespace = f"hg-{method}"
        self.tracker = Tracker(self.namespace, self.emitter, app_id=app_id)

    def send(self, i: int) -> Sent:
        user = f"sp-user-{i % 7}"
        subject = Subject().set_platform("srv").set_user_id(user)
        context = [SelfDescribingJson(CONTEXT_SCHEMA, {"i": i, "items": ["x", "y"]})]
        common: dict[str, Any] = {"event_subject": subject, "context": context}
        k = i % 4
        event: StructuredEvent | PageView | SelfDescribing | ScreenView
        if k == 0:
            kind = "struct"
            event = StructuredEvent(
                "shop", "add-to-basket", label=f"sku-{i}", property_="red", value=i + 0.5, **common
            )
        elif k == 1:
            kind = "page_view"
            event = PageView(
                f"http://shop.test/p/{i}", f"Product {i}", "http://shop.test/", **common
            )
        elif k == 2:
            kind = "unstruct"
            event = SelfDescribing(SelfDescribingJson(SKIP_SCHEMA, {"i": i}), **common)
        else:
            kind = "screen_view"  # sent as an unstruct event of the screen_view schema
            event = ScreenView(str(uuid.uuid4()), f"screen-{i}", **common)
        eid = self.tracker.track(event)
        assert eid
        return Sent(SNOWPLOW_TYPE, eid, self.source, i, user, kind)

    def finish(self, timeout: float) -> None:
        """One flush; it does nothing while a retry is pending, so the test polls
        the lake (and :meth:`nudge`) rather than relying on it."""
        self.tracker.flush()

    def nudge(self) -> None:
        self.emitter.flush()  # returns at once while the retry timer is set

    def close(self) -> None:
        self.emitter.retry_timer.cancel()
        self.emitter.timer.cancel()


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    """Every client a test makes, stopped at the end whatever happened."""
    made: list[Sender] = []
    try:
        yield made
    finally:
        for sender in made:
            sender.close()


# ------------------------------------------------------------------- the lake


def lake_rows(lake: Path, type_name: str) -> list[dict[str, Any]]:
    """Every row of the type, read by DuckDB over the hive-partitioned Parquet files."""
    if not any((lake / type_name).rglob("*.parquet")):
        return []

    def read() -> list[dict[str, Any]]:
        with duckdb.connect() as con:
            con.sql("SET TimeZone = 'UTC'")
            rel = con.sql(f"select * from {duck_glob(lake, type_name)}")  # noqa: S608 - a test path
            return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]

    return relisting(read)


def lake_ids(lake: Path, type_name: str) -> set[str]:
    if not any((lake / type_name).rglob("*.parquet")):
        return set()
    query = f"select id from {duck_glob(lake, type_name)}"  # noqa: S608 - a test path

    def read() -> set[str]:
        with duckdb.connect() as con:
            return {i for (i,) in con.sql(query).fetchall()}

    return relisting(read)


def by_type(sent: Iterable[Sent]) -> dict[str, list[Sent]]:
    out: dict[str, list[Sent]] = {}
    for s in sent:
        out.setdefault(s.type, []).append(s)
    return out


def stream_heads(url: str, types: Iterable[str]) -> dict[str, int]:
    """Each type's last bus sequence now."""

    async def run() -> dict[str, int]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            return {t: (await js.stream_info(stream_name(t))).state.last_seq for t in types}
        finally:
            await nc.close()

    return asyncio.run(run())


def wait_landed(
    stack: Stack,
    sent: list[Sent],
    timeout: float,
    nudge: Callable[[], None] = lambda: None,
    extra_types: Iterable[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Until every sent id is in its type's table and the loader has committed
    everything the bus held by then (so a resent copy that came later was seen
    too); then every row of those types."""
    wanted = {t: {s.id for s in group} for t, group in by_type(sent).items()}

    def landed() -> bool:
        nudge()
        return all(ids <= lake_ids(stack.lake, t) for t, ids in wanted.items())

    wait_until(landed, timeout, f"{len(sent)} events in the lake", every=0.25)
    types = sorted({*wanted, *extra_types})
    heads = stream_heads(stack.nats.url, types)
    wait_until(
        lambda: all(checkpoint_of(stack.nats.url, t).committed_seq >= heads[t] for t in types),
        30,
        f"the loader to commit the bus up to {heads}",
        every=0.25,
    )
    return {t: lake_rows(stack.lake, t) for t in types}


def assert_each_once(rows: dict[str, list[dict[str, Any]]], sent: list[Sent]) -> None:
    """Each sent call once in its table, under its source; nothing else there."""
    for type_name, group in by_type(sent).items():
        found = [(r["source"], r["id"]) for r in rows[type_name]]
        assert_exactly_once(found, [(s.source, s.id) for s in group])


# ---------------------------------------------------------------- the columns


def _check_segment_row(row: dict[str, Any], s: Sent, sdk: str) -> None:
    assert (row["type"], row["messageId"], row["userId"]) == (s.type, s.id, s.user), row
    assert row["timestamp"] is not None and row["receivedAt"] is not None, row
    assert row["sentAt"] is not None, row
    context = json.loads(row["context"])
    assert context["library"] == LIBRARY[sdk], row
    if sdk == "rudder":
        assert row["channel"] == "server", row
        assert json.loads(row["integrations"]) == {"All": True}, row
    kind = s.type
    if kind == "segment.tracks":
        assert row["event"] == s.name, row
        assert json.loads(row["properties"]) == {
            "i": s.i,
            "sdk": sdk,
            "tags": ["a", "é"],
            "price": s.i / 4,
        }
    elif kind == "segment.identifies":
        # RudderStack's SDK puts an identify's traits in context.traits
        traits = context["traits"] if sdk == "rudder" else json.loads(row["traits"])
        assert traits == {"i": s.i, "plan": "pro"}, row
    elif kind in ("segment.pages", "segment.screens"):
        assert row["name"] == s.name and json.loads(row["properties"])["i"] == s.i, row
        assert row["category"] == ("Docs" if kind == "segment.pages" else None), row
        if kind == "segment.screens":
            assert row["anonymousId"] == f"{sdk}-anon-{s.i}", row
    elif kind == "segment.groups":
        assert row["groupId"] == f"g-{s.i % 5}", row
        assert json.loads(row["traits"]) == {"i": s.i, "seats": 3}, row
    else:
        assert row["previousId"] == f"{sdk}-anon-{s.i}", row


def _check_snowplow_row(row: dict[str, Any], s: Sent, namespace: str) -> None:
    assert (row["event_id"], row["app_id"], row["user_id"]) == (s.id, s.source, s.user), row
    assert (row["platform"], row["name_tracker"], row["v_tracker"]) == (
        "srv",
        namespace,
        "py-1.1.0",
    )
    assert row["dvce_created_tstamp"] is not None and row["dvce_sent_tstamp"] is not None, row
    (context,) = json.loads(row["contexts"])["data"]
    assert context == {"schema": CONTEXT_SCHEMA, "data": {"i": s.i, "items": ["x", "y"]}}, row
    if s.name == "struct":
        assert row["event"] == "struct", row
        assert (row["se_category"], row["se_action"]) == ("shop", "add-to-basket"), row
        assert (row["se_label"], row["se_property"]) == (f"sku-{s.i}", "red"), row
        assert row["se_value"] == s.i + 0.5, row
    elif s.name == "page_view":
        assert row["event"] == "page_view", row
        assert (row["page_url"], row["page_title"]) == (
            f"http://shop.test/p/{s.i}",
            f"Product {s.i}",
        )
        assert row["page_referrer"] == "http://shop.test/", row
    else:
        assert row["event"] == "unstruct", row
        inner = json.loads(row["unstruct_event"])["data"]
        if s.name == "unstruct":
            assert inner == {"schema": SKIP_SCHEMA, "data": {"i": s.i}}, row
        else:
            assert inner["schema"] == SCREEN_SCHEMA, row
            assert inner["data"]["name"] == f"screen-{s.i}", row


def check_columns(
    rows: dict[str, list[dict[str, Any]]], sent: list[Sent], how: Callable[[Sent], str]
) -> None:
    """Each row against the call it came from; ``how(sent)``: which client sent it."""
    by_id = {(s.type, s.id): s for s in sent}
    for type_name, table in rows.items():
        for row in table:
            s = by_id[(type_name, row["id"])]
            if type_name == SNOWPLOW_TYPE:
                _check_snowplow_row(row, s, how(s))
            else:
                _check_segment_row(row, s, how(s))


# ------------------------------------------------------------------ the tests


def test_each_sdk_lands_every_event_once_under_its_key_name(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, senders: list[Sender]
) -> None:
    """Segment's and RudderStack's clients (at once) and Snowplow's (POST and the
    GET pixel) each send 1,200 calls of every kind through their own batching;
    each is in the lake once, its columns as sent, its source the key's name."""
    base = stack.base
    segment = SegmentSender("segment", base, CountingSession(), monkeypatch, max_retries=2)
    rudder = SegmentSender("rudder", base, CountingSession(), monkeypatch, max_retries=2)
    post = SnowplowSender(base, CountingSession(), SNOWPLOW_APP, "post", batch_size=25)
    pixel = SnowplowSender(base, CountingSession(), PIXEL_APP, "get", batch_size=1)
    senders += [segment, rudder, post, pixel]

    sent: list[Sent] = []
    for i in range(EVENTS):
        sent += [segment.send(i), rudder.send(i), post.send(i)]
        if i < 40:
            sent.append(pixel.send(i))
    segment.finish(30)
    rudder.finish(30)
    post.finish(30)
    pixel.finish(30)

    rows = wait_landed(stack, sent, 40, extra_types=SEGMENT_TYPES)
    assert_each_once(rows, sent)
    namespace = {s.id: "hg-get" if s.source == PIXEL_APP else "hg-post" for s in sent}
    check_columns(rows, sent, _client_of(namespace))
    # the write keys are stored nowhere: the rows carry their names
    text = json.dumps([list(r.values()) for table in rows.values() for r in table], default=str)
    assert SEGMENT_KEY not in text and RUDDER_KEY not in text
    assert {r["source"] for t in SEGMENT_TYPES for r in rows[t]} == {"website", "backend"}

    # Each client batched as it does, and every request was answered 200 at once.
    for sender, least in ((segment, EVENTS // 100), (rudder, EVENTS // 100), (post, EVENTS // 25)):
        s = sender.session
        assert s.errors == [] and set(s.statuses) == {200}, s.summary()
        assert least <= s.ok < EVENTS, s.summary()  # batches, not one call a request
    assert pixel.session.statuses == Counter({200: 40}), pixel.session.summary()
    assert rudder.session.gzipped == rudder.session.ok and segment.session.gzipped == 0
    assert segment.session.retry_counts == []


def _client_of(namespace: dict[str, str]) -> Callable[[Sent], str]:
    """Which client sent a call: the SDK for Segment's types, the tracker's
    namespace for Snowplow's."""
    sdk = {name: sdk for sdk, name in NAMES.items()}

    def how(s: Sent) -> str:
        return namespace[s.id] if s.type == SNOWPLOW_TYPE else sdk[s.source]

    return how


class Outage(threading.Thread):
    """Kills the gateway (-9) mid-request, and starts a new one on the same port
    ``down_s`` later.

    Once the client has had ``after`` answers, this watches the bus (a plain
    subscription to the streams' subjects): the first batch of events published
    while the client has a request in flight is the gateway's commit of that
    request, awaiting JetStream's acknowledgement, and the gateway is killed at
    that moment; usually before it answers, so the client resends events that
    landed, and the loader must drop the copies.  With no such moment in 3 s it
    kills all the same."""

    def __init__(self, stack: Stack, session: CountingSession, after: int, down_s: float) -> None:
        super().__init__(daemon=True, name="outage")
        self.stack, self.session, self.after, self.down_s = stack, session, after, down_s
        self.killed = threading.Event()
        self.restarted = threading.Event()
        self.error: BaseException | None = None
        self.ok_at_kill = 0
        self.inflight_at_kill = 0
        self.on_publish = False  # killed as the in-flight request's events reached the bus
        self.down_for = 0.0

    def run(self) -> None:
        try:
            asyncio.run(self._kill())
            killed = time.monotonic()
            self.killed.set()
            time.sleep(self.down_s)
            self.stack.restart()
            self.down_for = time.monotonic() - killed
        except BaseException as exc:  # handed to the test's thread
            self.error = exc
        finally:
            self.killed.set()
            self.restarted.set()

    async def _kill(self) -> None:
        session = self.session
        published = asyncio.Event()

        async def seen(msg: Any) -> None:
            if session.ok >= self.after and session.inflight and not published.is_set():
                if (msg.headers or {}).get(KIND, "batch") == "batch":
                    self.kill()
                    self.on_publish = True
                    published.set()

        nc = await nats.connect(self.stack.nats.url)
        try:
            await nc.subscribe(subject(">"), cb=seen)
            deadline = time.monotonic() + 30
            while session.ok < self.after:
                assert time.monotonic() < deadline, f"no {self.after} answers in 30s"
                await asyncio.sleep(0.001)
            try:
                await asyncio.wait_for(published.wait(), 3)
            except TimeoutError:
                self.kill()
        finally:
            await nc.close()

    def kill(self) -> None:
        if self.stack.gateway.alive():
            self.inflight_at_kill, self.ok_at_kill = self.session.inflight, self.session.ok
            self.stack.gateway.kill()

    def wait(self, event: threading.Event, what: str) -> None:
        assert event.wait(45), f"the outage thread: no {what} in 45s"
        if self.error is not None:
            raise self.error


def make_sender(
    sdk: str, stack: Stack, monkeypatch: pytest.MonkeyPatch, senders: list[Sender]
) -> tuple[Sender, int]:
    """The client, and after how many answers to kill the gateway (about 200 calls)."""
    session = CountingSession()
    sender: Sender
    if sdk == "snowplow":
        sender, after = SnowplowSender(stack.base, session, SNOWPLOW_APP, "post", 20), 10
    else:
        # Segment: 11 attempts, the first retry at once then 0.5, 1, 2 s ... .
        # RudderStack: 11 attempts, full-jitter waits U(0, 2^n) s: a short outage.
        sender, after = SegmentSender(sdk, stack.base, session, monkeypatch, max_retries=10), 2
    senders.append(sender)
    return sender, after


@pytest.mark.chaos
@pytest.mark.parametrize("sdk", ["segment", "rudder", "snowplow"])
def test_a_gateway_killed_mid_send_loses_and_duplicates_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, senders: list[Sender], sdk: str
) -> None:
    """The gateway is killed (-9) while the client sends its 1,200 calls, after
    about 200, and a new one starts on the same port about 1-2 s later; the
    client's own retries deliver the rest: each call in the lake exactly once."""
    sender, after = make_sender(sdk, stack, monkeypatch, senders)
    outage = Outage(stack, sender.session, after, down_s=0.3)
    outage.start()
    sent: list[Sent] = []
    try:
        for i in range(500):
            sent.append(sender.send(i))
            if i % 10 == 9:
                time.sleep(0.001)  # a stream of calls, not one burst
        outage.wait(outage.killed, "kill")
        sent += [sender.send(i) for i in range(500, 800)]  # the gateway is down (or starting)
        outage.wait(outage.restarted, "restart")
        sent += [sender.send(i) for i in range(800, EVENTS)]
        sender.finish(45)
    finally:
        outage.join(45)
    rows = wait_landed(stack, sent, 45, nudge=sender.nudge)
    assert_each_once(rows, sent)
    check_columns(rows, sent, lambda s: "hg-post" if sdk == "snowplow" else sdk)

    # The client was mid-send when the gateway went: it had been answered, some of
    # its requests got no answer, and it got answers again from the new gateway.
    session = sender.session
    assert outage.ok_at_kill >= after, session.summary()
    assert outage.on_publish, "not killed as a request's events reached the bus"
    assert session.errors, f"no request failed: {session.summary()}"
    assert session.ok > outage.ok_at_kill, session.summary()
    assert not [s for s in session.statuses if 400 <= s < 500], session.summary()
    if sdk == "segment":
        assert max(session.retry_counts, default=0) >= 1, session.retry_counts
    # How many events the killed gateway had put on the bus without answering (the
    # client resent them; the loader dropped the copies): usually the whole batch in
    # flight, but the gateway may win the race and answer first.
    copies = sum(len(events_of(stack.nats.url, t)) for t in by_type(sent)) - len(sent)
    print(  # shown with -s
        f"{sdk}: killed after {outage.ok_at_kill} answers, {outage.inflight_at_kill} in flight "
        f"(on its publish: {outage.on_publish}), "
        f"down {outage.down_for:.1f}s; {session.summary()}; {copies} copies in the bus"
    )


def test_a_track_a_schema_claims_lands_in_its_typed_table_too(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, senders: list[Sender]
) -> None:
    """A track named "Song Skipped" (what ``music.SongSkipped`` claims) lands in
    segment.tracks and in music.SongSkipped with its properties as data; one whose
    properties do not fit the schema lands in segment.tracks only."""
    sender = SegmentSender("segment", stack.base, CountingSession(), monkeypatch, max_retries=2)
    senders.append(sender)
    client = sender.client
    skips: dict[str, dict[str, Any]] = {}
    tracks: list[Sent] = []
    for i in range(20):
        props = {
            "user_id": str(uuid.uuid4()),
            "track_id": f"t-{i}",
            "skipped_at": "2026-12-03T12:00:00.250Z",
            "position_ms": 1000 + i,
            "queue_ahead": [f"t-{i + 1}", f"t-{i + 2}"],
        }
        ok, msg = client.track(user_id=f"listener-{i % 3}", event="Song Skipped", properties=props)
        assert ok
        skips[msg["messageId"]] = props
        tracks.append(Sent("segment.tracks", msg["messageId"], "website", i, None, "Song Skipped"))
    ok, bad = client.track(user_id="listener-0", event="Song Skipped", properties={"track_id": 7})
    assert ok
    tracks.append(Sent("segment.tracks", bad["messageId"], "website", 20, None, "Song Skipped"))
    for i in range(21, 30):
        ok, msg = client.track(user_id="listener-1", event="Song Liked", properties={"i": i})
        assert ok
        tracks.append(Sent("segment.tracks", msg["messageId"], "website", i, None, "Song Liked"))
    sender.finish(30)

    typed = [Sent(SKIPPED, mid, "website", 0, None, None) for mid in skips]
    rows = wait_landed(stack, tracks + typed, 30)
    assert_each_once(rows, tracks + typed)
    assert sorted((r["id"], r["event"]) for r in rows["segment.tracks"]) == sorted(
        (s.id, s.name) for s in tracks
    )
    for row in rows[SKIPPED]:
        props = skips[row["id"]]
        assert (str(row["user_id"]), row["track_id"]) == (props["user_id"], props["track_id"])
        assert (row["position_ms"], row["queue_ahead"]) == (
            props["position_ms"],
            props["queue_ahead"],
        )
        assert row["skipped_at"] == dt.datetime(2026, 12, 3, 12, 0, 0, 250_000, tzinfo=dt.UTC)
        assert row["source"] == "website" and row["type"] == SKIPPED
    # the typed copy that does not fit its schema is kept in the failed stream
    (kept,) = [f for f in failed(stack.nats.url) if bad["messageId"] in json.dumps(f)]
    assert (kept["id"], kept["type"], kept["source"]) == (bad["messageId"], SKIPPED, "website")
    assert kept["index"] == 20 and "properties.track_id" in kept["reason"], kept
    assert kept["event"]["messageId"] == bad["messageId"], kept  # the whole call, as sent
    assert sender.session.errors == [] and set(sender.session.statuses) == {200}
