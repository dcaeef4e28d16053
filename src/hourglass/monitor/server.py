"""``hourglass dashboard``: the SLO metrics and the built-in page, over HTTP.

One process, read-only: every ``dashboard_refresh_s`` the :class:`Watcher`
reads the bus and the lake; the snapshot is encoded once per refresh, so a page
polling it costs a copy of bytes, whatever the number of viewers.  Routes:

* ``/`` — the page (``page.html``: no external assets, it works offline);
* ``/api/snapshot`` — every type's recent buckets, rates and latency (JSON);
* ``/api/bucket?type=T&start=S`` — one bucket: its manifest, and the audit of
  it (published, delivered, duplicates, missing; the files checked against the
  manifest), computed on request;
* ``/metrics`` — the SLO metrics (``metrics.py``); ``/healthz``.

The bus down: the page shows the last snapshot with its age and the error, and
``hourglass_slo_refresh_errors_total`` counts; nothing is retried faster than
the refresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

import msgspec
import uvicorn
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import generate_latest

from hourglass import log
from hourglass.audit import integrity
from hourglass.bus import jetstream
from hourglass.bus.embedded import resolve_bus_url
from hourglass.config import Settings
from hourglass.exceptions import BusUnavailable, HourglassError
from hourglass.lake.layout import bucket_key
from hourglass.lake.store import lake_store
from hourglass.monitor.metrics import SloMetrics
from hourglass.monitor.snapshot import Snapshot
from hourglass.monitor.watch import Watcher
from hourglass.schemas import load_registry

logger = log.get("hourglass.monitor")

# ASGI's shapes (the gateway has the same; the dashboard does not import the gateway).
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Source(Protocol):
    """What the page's routes read: the live :class:`Dashboard`, or a test's."""

    def snapshot_json(self) -> bytes: ...
    def bucket_json(self, type_name: str, start: int) -> bytes | None: ...
    def metrics_text(self) -> bytes: ...


class Dashboard:
    """The watcher, its metrics, and the snapshot as last encoded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        registry = load_registry(settings)
        self.store = lake_store(settings)
        self.watcher = Watcher(settings, registry.type_names, self.store)
        self.metrics = SloMetrics()
        for name in registry.type_names:  # every type's series from the start: rate() is 0
            self.metrics.close_delay.labels(name)
            self.metrics.skewed.labels(name)
        self._json = msgspec.json.encode(self.watcher.snapshot())
        self.error = ""

    async def refresh(self, js: JetStreamContext) -> None:
        try:
            await self.watcher.refresh(js)
        except (HourglassError, OSError, msgspec.MsgspecError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.metrics.refresh_errors.inc()
            logger.warning("dashboard refresh failed", extra={"error": self.error})
        else:
            self.error = ""
            self.metrics.refreshed.set(self.watcher.refreshed)
            self.metrics.refresh_seconds.observe(self.watcher.took)
        snapshot = self.watcher.snapshot()
        if self.error:
            snapshot.errors = [self.error, *snapshot.errors]
        publish(self.metrics, self.watcher, snapshot)
        self._json = msgspec.json.encode(snapshot)

    def snapshot_json(self) -> bytes:
        return self._json

    def bucket_json(self, type_name: str, start: int) -> bytes | None:
        watch = self.watcher.types.get(type_name)
        if watch is None:
            return None
        width = self.watcher.width
        # As the lake holds it now: compaction swaps a closed bucket's files and
        # manifest for merged ones, after the watcher read the first.
        manifest = self.watcher.manifest(type_name, start)
        cell = next(
            (
                c
                for c in self.watcher.cells(watch, time.time(), self._target(type_name))
                if c.start == start
            ),
            None,
        )
        problems: list[str] = []
        if manifest is not None:
            key = bucket_key(type_name, dt.datetime.fromtimestamp(start, dt.UTC), width)
            try:
                problems = integrity(self.store, key, manifest)
            except (OSError, HourglassError) as exc:
                problems = [f"could not check the files: {exc}"]
        published = watch.published.get(start, 0) if start >= watch.horizon else None
        delivered = watch.delivered.get(start, 0)
        duplicates = manifest.duplicates_dropped if manifest is not None else 0
        return msgspec.json.encode(
            {
                "type": type_name,
                "start": start,
                "end": start + width,
                "state": cell.state if cell is not None else None,
                "manifest": manifest,
                "audit": {
                    "published": published,
                    "delivered": delivered,
                    "duplicates": duplicates,
                    "missing": None
                    if published is None
                    else max(0, published - delivered - duplicates),
                    "files_match_manifest": not problems if manifest is not None else None,
                    "problems": problems,
                },
            }
        )

    def _target(self, type_name: str) -> int:
        return self.settings.tier_targets_s[self.settings.type_settings(type_name).tier]

    def metrics_text(self) -> bytes:
        return bytes(generate_latest(self.metrics.registry))


def publish(m: SloMetrics, watcher: Watcher, snapshot: Snapshot) -> None:
    """The snapshot as Prometheus metrics; closes seen since the last refresh as
    observations (the ones found at start are not: they were counted before)."""
    for name, manifest in watcher.closed_now:
        m.close_delay.labels(name).observe(max(0.0, manifest.close_delay_s))
        m.skewed.labels(name).inc(manifest.skewed)
    m.gateways.set(snapshot.gateways)
    for row in snapshot.types:
        t = row.type
        closed = [c for c in row.cells if c.close_delay_s is not None]
        m.overdue.labels(t).set(row.overdue)
        m.oldest_overdue.labels(t).set(max(0.0, row.overdue_s))
        m.lag_events.labels(t).set(row.lag_events)
        m.lag_seconds.labels(t).set(row.lag_s)
        # Settled: closed, tallies on the bus, and the next bucket closed too, so
        # the bucket's skewed events (they land in the next one) are counted: a
        # skewed event in flight is not a loss to page about.
        known = [
            c
            for c, after in zip(row.cells, row.cells[1:], strict=False)
            if c.close_delay_s is not None
            and c.published is not None
            and after.state not in ("open", "overdue")
        ]
        m.missing.labels(t).set(
            sum(max(0, (c.published or 0) - c.delivered - c.duplicates) for c in known)
        )
        m.incomplete.labels(t).set(
            sum(1 for c in known if c.published != c.delivered + c.duplicates)
        )
        if closed:
            last = closed[-1]
            m.last_close_delay.labels(t).set(last.close_delay_s or 0.0)
            m.last_closed_end.labels(t).set(last.start + snapshot.width_s)
            m.skewed_ratio.labels(t).set(last.skewed / last.count if last.count else 0.0)
        if known:
            last = known[-1]
            m.completeness.labels(t).set(
                (last.delivered + last.duplicates) / last.published if last.published else 1.0
            )


def page() -> bytes:
    return resources.files("hourglass.monitor").joinpath("page.html").read_bytes()


class App:
    """The ASGI application over a :class:`Source`."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._page = page()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = str(scope["path"])
        if scope["method"] not in ("GET", "HEAD"):
            return await _answer(send, 405, b"GET only\n", "text/plain")
        if path == "/":
            return await _answer(send, 200, self._page, "text/html; charset=utf-8")
        if path == "/api/snapshot":
            return await _answer(send, 200, self.source.snapshot_json(), "application/json")
        if path == "/api/bucket":
            query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
            try:
                type_name, start = query["type"][0], int(query["start"][0])
            except (KeyError, ValueError):
                return await _answer(
                    send, 400, b'{"error":"type and start needed"}', "application/json"
                )
            body = self.source.bucket_json(type_name, start)
            if body is None:
                return await _answer(send, 404, b'{"error":"no such type"}', "application/json")
            return await _answer(send, 200, body, "application/json")
        if path == "/metrics":
            return await _answer(send, 200, self.source.metrics_text(), "text/plain; version=0.0.4")
        if path == "/healthz":
            return await _answer(send, 200, b"ok\n", "text/plain")
        return await _answer(send, 404, b"not found\n", "text/plain")


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def run_dashboard(settings: Settings) -> None:
    dashboard = Dashboard(settings)
    config = uvicorn.Config(
        App(dashboard),
        host=settings.host,
        port=settings.dashboard_port,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    nc: Client | None = None
    logger.info(
        "dashboard running",
        extra={"url": f"http://{settings.host}:{settings.dashboard_port}/"},
    )
    try:
        while not serving.done():
            if nc is None or not nc.is_connected:
                try:
                    nc = await asyncio.wait_for(
                        jetstream.connect(resolve_bus_url(settings), name="hourglass-dashboard"),
                        10,
                    )
                except (BusUnavailable, HourglassError, OSError, asyncio.TimeoutError) as exc:
                    dashboard.error = f"bus: {exc}"
                    dashboard.metrics.refresh_errors.inc()
            if nc is not None and nc.is_connected:
                await dashboard.refresh(nc.jetstream(timeout=10))
            await asyncio.sleep(settings.dashboard_refresh_s)
        serving.result()
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
        if nc is not None:
            await nc.close()
