"""``hourglass loader``: one durable pull consumer per stream, each in its own task.

Streams are independent: a slow or broken type delays only itself.  The heavy
work of a stream (Arrow conversion, Parquet, fsync) runs in a worker thread so
the event loop keeps the bus connection alive and the other streams moving.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hourglass import log
from hourglass.bus import jetstream
from hourglass.config import Settings, bucket_seconds
from hourglass.exceptions import ConfigError
from hourglass.gateway.server import load_registry, resolve_bus_url
from hourglass.gateway.watermark import LEASE_BUCKET
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.failed import FAILED_DIR, FailedFormat
from hourglass.lake.layout import durable_write_bytes
from hourglass.loader.typeloader import RowFormat, TypeLoader, to_bus_message

logger = log.get("hourglass.loader")

DURABLE = "hg-loader"
FETCH_BATCH = 256


class LeaseView:
    """The set of live gateways, from the lease KV bucket; None until first read."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.live: set[str] | None = None

    async def run(self, interval: float = 0.5) -> None:
        while True:
            try:
                kv = await self._js.key_value(LEASE_BUCKET)
                try:
                    self.live = set(await kv.keys())
                except nats.js.errors.NoKeysError:
                    self.live = set()
            except nats.js.errors.BucketNotFoundError:
                self.live = set()  # no gateway has ever run
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                self.live = None
                logger.warning("leases unknown", extra={"error": repr(exc)})
            await asyncio.sleep(interval)


class LoaderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lag = Gauge(
            "hourglass_loader_lag_messages",
            "Bus messages not yet delivered.",
            ["stream"],
            registry=r,
        )
        self.files = Counter(
            "hourglass_loader_files_written", "Parquet files written.", ["stream"], registry=r
        )
        self.rows = Counter(
            "hourglass_loader_rows_written", "Rows written.", ["stream"], registry=r
        )
        self.duplicates = Counter(
            "hourglass_loader_duplicates_dropped", "Duplicates dropped.", ["stream"], registry=r
        )
        self.skewed = Counter(
            "hourglass_loader_skewed_events", "Events for closed buckets.", ["stream"], registry=r
        )
        self.closed = Counter(
            "hourglass_loader_buckets_closed", "Buckets closed.", ["stream"], registry=r
        )
        self.open = Gauge(
            "hourglass_loader_buckets_open", "Buckets with pending rows.", ["stream"], registry=r
        )
        self.close_delay = Histogram(
            "hourglass_loader_close_delay_seconds",
            "Bucket close time after its end.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 900),
            registry=r,
        )


@dataclass
class Stream:
    name: str  # the lake folder: the type name, or _failed
    stream: str
    subject: str
    loader: TypeLoader


async def drive(
    s: Stream, js: JetStreamContext, leases: LeaseView, settings: Settings, metrics: LoaderMetrics
) -> None:
    await asyncio.to_thread(s.loader.recover)
    # The checkpoint, not the consumer's ack state, says where to resume: start a
    # fresh consumer right after it, so nothing waits out an ack timeout.
    try:
        await js.delete_consumer(s.stream, DURABLE)
    except nats.js.errors.NotFoundError:
        pass
    sub = await js.pull_subscribe(
        s.subject,
        durable=DURABLE,
        stream=s.stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=s.loader.state.committed_seq + 1,
            ack_wait=300,
            max_deliver=-1,
            max_ack_pending=100_000,
        ),
    )
    try:
        await _loop(s, sub, leases, settings, metrics)
    finally:
        # A clean stop (SIGTERM) commits what was processed; a crash does not
        # need to: the messages after the checkpoint come again.
        if s.loader.processed_seq > s.loader.state.committed_seq:
            s.loader.flush()
            logger.info("flushed on stop", extra={"stream": s.name})


async def _loop(
    s: Stream,
    sub: JetStreamContext.PullSubscription,
    leases: LeaseView,
    settings: Settings,
    metrics: LoaderMetrics,
) -> None:
    last: Msg | None = None
    stats = s.loader.stats
    seen = (0, 0, 0, 0, 0)
    while True:
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            msgs = []
        caught_up = not msgs or msgs[-1].metadata.num_pending == 0
        if msgs:
            metrics.lag.labels(s.name).set(msgs[-1].metadata.num_pending)
            batch = [
                to_bus_message(
                    m.metadata.sequence.stream, m.data, (m.headers or {}).get(jetstream.KIND)
                )
                for m in msgs
            ]
            await asyncio.to_thread(s.loader.process, batch)
            last = msgs[-1]
        else:
            metrics.lag.labels(s.name).set(0)
        due = time.time() - s.loader.last_flush >= settings.flush_interval_s
        if due or s.loader.pending_rows() > 1_000_000:
            metrics.open.labels(s.name).set(len(s.loader._pending))
            await asyncio.to_thread(s.loader.flush)
            if last is not None:
                await last.ack_sync()
                last = None
            s.loader.expire()
        manifests = await asyncio.to_thread(s.loader.close_ready, leases.live, caught_up)
        for manifest in manifests:
            metrics.close_delay.observe(max(0.0, manifest.close_delay_s))
        now = (
            stats.files_written,
            stats.rows_written,
            stats.duplicates,
            stats.skewed,
            stats.closed,
        )
        for counter, before, after in zip(
            (metrics.files, metrics.rows, metrics.duplicates, metrics.skewed, metrics.closed),
            seen,
            now,
            strict=True,
        ):
            if after > before:
                counter.labels(s.name).inc(after - before)
        seen = now


def build_streams(settings: Settings) -> list[Stream]:
    registry = load_registry(settings)
    width = bucket_seconds(settings.bucket)
    root = settings.data_path
    lake = root / "lake"
    streams = []
    for schema in registry:
        fmt: RowFormat = LakeSchema(schema)
        name = schema.type_name
        streams.append(
            Stream(
                name,
                jetstream.stream_name(name),
                jetstream.subject(name),
                TypeLoader(
                    name,
                    fmt,
                    lake=lake,
                    state_path=root / "loader" / f"{name}.json",
                    quarantine=root / "loader" / "quarantine" / name,
                    width_s=width,
                    window_s=settings.dedup_window_s,
                ),
            )
        )
    streams.append(
        Stream(
            FAILED_DIR,
            jetstream.FAILED_STREAM,
            jetstream.FAILED_SUBJECT + ".>",
            TypeLoader(
                FAILED_DIR,
                FailedFormat(),
                lake=lake,
                state_path=root / "loader" / f"{FAILED_DIR}.json",
                quarantine=root / "loader" / "quarantine" / FAILED_DIR,
                width_s=width,
                window_s=0,
                closes=False,
                dedup=False,
            ),
        )
    )
    return streams


async def _wait_for_streams(js: JetStreamContext, names: list[str]) -> None:
    for name in names:
        while True:
            try:
                await js.stream_info(name)
                break
            except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
                logger.info("waiting for stream (the gateway creates it)", extra={"stream": name})
                await asyncio.sleep(0.5)


def check_layout(settings: Settings) -> None:
    """One lake, one bucket width: refuse to mix ``hour=`` and ``minute=`` layouts."""
    lake = settings.data_path / "lake"
    marker = lake / "_hourglass.json"
    if marker.exists():
        existing = msgspec.json.decode(marker.read_bytes()).get("bucket")
        if existing != settings.bucket:
            raise ConfigError(
                f"the lake {lake} is written with --bucket {existing}; run with the same "
                f"width or use another --data-dir (asked for --bucket {settings.bucket})"
            )
        return
    durable_write_bytes(marker, msgspec.json.encode({"bucket": settings.bucket}))


async def run_loader(settings: Settings) -> None:
    check_layout(settings)
    streams = build_streams(settings)
    url = resolve_bus_url(settings)
    nc = await jetstream.connect(url, name="hourglass-loader")
    js = nc.jetstream(timeout=10)
    metrics = LoaderMetrics()
    if settings.loader_metrics_port:
        start_http_server(
            settings.loader_metrics_port, addr=settings.host, registry=metrics.registry
        )
    await _wait_for_streams(js, [s.stream for s in streams])
    leases = LeaseView(js)
    tasks = [asyncio.create_task(leases.run(), name="leases")]
    tasks += [
        asyncio.create_task(_supervised(s, js, leases, settings, metrics), name=s.name)
        for s in streams
    ]
    logger.info(
        "loader running",
        extra={"streams": len(streams), "bus": url, "lake": str(settings.data_path / "lake")},
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        logger.info("loader stopped")
    finally:
        for task in tasks:
            task.cancel()
        # Let every stream finish its stop-time flush before the connection goes.
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()


async def _supervised(
    s: Stream, js: JetStreamContext, leases: LeaseView, settings: Settings, metrics: LoaderMetrics
) -> None:
    """Restart one stream's loop after an error without touching the others.

    A restart goes through ``recover`` again, so whatever was processed but not
    flushed is redelivered and processed afresh.
    """
    while True:
        try:
            await drive(s, js, leases, settings, metrics)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("stream loader failed; restarting it", extra={"stream": s.name})
            s.loader = _fresh(s.loader)
            await asyncio.sleep(1.0)


def _fresh(old: TypeLoader) -> TypeLoader:
    return TypeLoader(
        old.name,
        old.fmt,
        lake=old.lake,
        state_path=old.state_path,
        quarantine=old.quarantine,
        width_s=old.width,
        window_s=old.deduper.window_s if old.deduper else 0,
        closes=old.closes,
        dedup=old.deduper is not None,
        clock=old.clock,
    )


def loader_state_dir(settings: Settings) -> Path:
    return settings.data_path / "loader"
