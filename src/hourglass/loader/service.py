"""``hourglass loader``: one durable pull consumer per stream, each in its own task.

Streams are independent: a slow or broken type delays only itself.  The heavy
work of a stream (Arrow conversion, Parquet, fsync) runs in a worker thread so
the event loop keeps the bus connection alive and the other streams moving.

A full lake filesystem (ENOSPC, EDQUOT) pauses instead of crashing: the write
that failed (process's quarantine, flush, close) left nothing behind (see
``TypeLoader.flush``) and is tried again every few seconds with the same rows,
which stay in memory and unacknowledged on the bus.  One log line says "lake
filesystem full, pausing", one says when it resumes; ``hourglass_loader_lake_full``
is 1 meanwhile.  See docs/disk-full.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import start_http_server

from hourglass import log
from hourglass.bus import jetstream
from hourglass.bus.embedded import resolve_bus_url
from hourglass.bus.marks import LeaseView
from hourglass.config import Settings, bucket_seconds
from hourglass.exceptions import SequenceGap
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.failed import FAILED_DIR, FailedFormat
from hourglass.lake.layout import check_layout
from hourglass.lake.manifest import Manifest
from hourglass.loader.ops import LakeSpace, LoaderMetrics, is_disk_full
from hourglass.loader.typeloader import RowFormat, TypeLoader, to_bus_message
from hourglass.schemas import load_registry

logger = log.get("hourglass.loader")

DURABLE = "hg-loader"
# At most 32 messages of up to commit_max_bytes (1 MiB) per fetch: a server drops a
# client with more than its max_pending (64 MiB by default) in flight to it.
FETCH_BATCH = 32


T = TypeVar("T")


async def stored_once(s: Stream, space: LakeSpace, what: str, work: Callable[[], T]) -> list[T]:
    """Run one lake write of ``s`` in a worker thread: ``[result]``; or, if the lake
    is full, pause and return ``[]``.

    The loader's writes are safe to repeat: a failed durable write leaves no temp
    file, and its in-memory checkpoint changes only once the new one is saved.
    """
    try:
        result = await _whole(work)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        await space.wait(s.name, what, exc)
        return []
    space.wrote(s.name, what)
    return [result]


async def _whole(work: Callable[[], T]) -> T:
    """``work`` in a worker thread; cancelled, it still waits for the thread to end.

    A thread cannot be stopped, so a plain ``await asyncio.to_thread`` that is
    cancelled (SIGTERM) returns while the write goes on, and the stream's
    stop-time flush would then run the same loader's flush beside it.  The
    cancellation is raised once the thread is done: writes are short.
    """
    future = asyncio.ensure_future(asyncio.to_thread(work))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


async def until_stored(s: Stream, space: LakeSpace, what: str, work: Callable[[], T]) -> T:
    """Run one lake write of ``s``, pausing and retrying it while the lake is full.

    The same rows are written again: they stay in memory, and their bus messages
    stay unacknowledged, until the write succeeds.
    """
    while True:
        done = await stored_once(s, space, what, work)
        if done:
            return done[0]


def _close_ready(
    loader: TypeLoader, leases: LeaseView, drained_as_of: float | None
) -> list[Manifest]:
    return loader.close_ready(
        leases.live,
        drained_as_of is not None,
        live_as_of=leases.read_at,
        drained_as_of=drained_as_of,
    )


@dataclass
class Stream:
    name: str  # the lake folder: the type name, or _failed
    stream: str
    subject: str
    loader: TypeLoader


async def _check_contiguous(js: JetStreamContext, s: Stream, msgs: list[Msg]) -> None:
    """Every stream message must pass through the loader, in order.

    A gap means messages were lost in flight (a slow-consumer disconnect drops
    what was on the wire, and acknowledging a later message would acknowledge
    them too): raise before processing, so the stream restarts from its
    checkpoint.  Only messages that aged out of the stream (``max_age``) before
    being read are let go, loudly.
    """
    expected = s.loader.processed_seq + 1
    for msg in msgs:
        seq = int(msg.metadata.sequence.stream)
        if seq > expected:
            first = int((await js.stream_info(s.stream)).state.first_seq)
            if seq > max(expected, first):
                raise SequenceGap(f"stream {s.stream}: got message {seq}, expected {expected}")
            logger.error(
                "messages expired from the bus before the loader read them",
                extra={"stream": s.stream, "from_seq": expected, "to_seq": seq - 1},
            )
        expected = max(expected, seq + 1)


async def _drained_as_of(
    sub: JetStreamContext.PullSubscription, msgs: list[Msg], asked: float
) -> float | None:
    """When the bus was last known to hold nothing more for us, or None.

    An empty fetch alone does not say so: a process paused (SIGSTOP) during the
    fetch wakes to its timeout with messages waiting.  Then the server is asked.
    """
    if msgs:
        return asked if msgs[-1].metadata.num_pending == 0 else None
    asked = time.time()
    try:
        info = await sub.consumer_info()
    except (nats.errors.Error, asyncio.TimeoutError):
        return None
    return asked if info.num_pending == 0 else None


async def _ack(s: Stream, last: Msg) -> None:
    """Acknowledge up to ``last``; a failure is harmless, the checkpoint rules."""
    try:
        await last.ack_sync()
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        logger.warning(
            "ack failed; a later one covers it", extra={"stream": s.name, "error": repr(exc)}
        )


async def drive(
    s: Stream,
    js: JetStreamContext,
    leases: LeaseView,
    settings: Settings,
    metrics: LoaderMetrics,
    space: LakeSpace,
) -> None:
    await until_stored(s, space, "recover", s.loader.recover)
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
        await _loop(s, js, sub, leases, settings, metrics, space)
    finally:
        # A clean stop (SIGTERM) commits what was processed; a crash does not
        # need to: the messages after the checkpoint come again.
        if s.loader.processed_seq > s.loader.state.committed_seq:
            _flush_on_stop(s)


def _flush_on_stop(s: Stream) -> None:
    try:
        s.loader.flush()
    except OSError as exc:
        # Raising here would replace the cancellation that stops the loader.
        # Nothing is lost: what is not committed is read from the bus again.
        logger.warning(
            "could not flush on stop; the messages after the checkpoint are read again "
            "at the next start",
            extra={"stream": s.name, "error": str(exc)},
        )
    else:
        logger.info("flushed on stop", extra={"stream": s.name})


async def _loop(
    s: Stream,
    js: JetStreamContext,
    sub: JetStreamContext.PullSubscription,
    leases: LeaseView,
    settings: Settings,
    metrics: LoaderMetrics,
    space: LakeSpace,
) -> None:
    last: Msg | None = None
    stats = s.loader.stats
    seen = (0, 0, 0, 0, 0)
    while True:
        asked = time.time()
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            msgs = []
        drained_as_of = await _drained_as_of(sub, msgs, asked)
        if msgs:
            await _check_contiguous(js, s, msgs)
            metrics.lag.labels(s.name).set(msgs[-1].metadata.num_pending)
            batch = [
                to_bus_message(
                    m.metadata.sequence.stream, m.data, (m.headers or {}).get(jetstream.KIND)
                )
                for m in msgs
            ]
            await until_stored(s, space, "process", partial(s.loader.process, batch))
            last = msgs[-1]
        else:
            metrics.lag.labels(s.name).set(0)
        due = time.time() - s.loader.last_flush >= settings.flush_interval_s
        if due or s.loader.pending_rows() > 1_000_000:
            metrics.open.labels(s.name).set(len(s.loader._pending))
            await until_stored(s, space, "flush", s.loader.flush)
            if last is not None:
                await _ack(s, last)
                last = None
            await asyncio.to_thread(s.loader.expire)
        # Not retried in place: after a pause the loop fetches and flushes again
        # first, so leases and ``caught_up`` are current when it closes.
        close = partial(_close_ready, s.loader, leases, drained_as_of)
        closed = await stored_once(s, space, "close", close)
        for manifest in closed[0] if closed else []:
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
    lake = settings.lake_path
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
                    state_path=settings.checkpoint_path(name),
                    quarantine=settings.quarantine_path(name),
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
                state_path=settings.checkpoint_path(FAILED_DIR),
                quarantine=settings.quarantine_path(FAILED_DIR),
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


def yield_cpu(nice: int) -> None:
    """Lower this process's CPU priority (see ``Settings.loader_nice``).

    Threads started later (Arrow's pool, ``asyncio.to_thread`` workers) inherit
    both: the nice value, and ``SCHED_BATCH``, which tells Linux the loader is a
    batch job whose wake-ups must not preempt a gateway mid-request.
    """
    os.nice(nice)
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


async def run_loader(settings: Settings) -> None:
    if settings.loader_nice:
        yield_cpu(settings.loader_nice)
    metrics = LoaderMetrics()
    space = LakeSpace(settings.lake_path, metrics)
    if settings.loader_metrics_port:
        start_http_server(
            settings.loader_metrics_port, addr=settings.host, registry=metrics.registry
        )
    while True:
        try:
            check_layout(settings)
            break
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            await space.wait("_layout", "layout", exc)
    space.wrote("_layout", "layout")
    streams = build_streams(settings)
    url = resolve_bus_url(settings)
    nc = await jetstream.connect(url, name="hourglass-loader")
    js = nc.jetstream(timeout=10)
    await _wait_for_streams(js, [s.stream for s in streams])
    leases = LeaseView(js)
    tasks = [asyncio.create_task(leases.run(), name="leases")]
    tasks += [
        asyncio.create_task(_supervised(s, js, leases, settings, metrics, space), name=s.name)
        for s in streams
    ]
    logger.info(
        "loader running",
        extra={"streams": len(streams), "bus": url, "lake": str(settings.lake_path)},
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        logger.info("loader stopped")
    finally:
        await _stop_all(tasks)
        await nc.close()


async def _stop_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel every task and wait until each has finished (its stop-time flush).

    A task still running a second after its cancellation is cancelled again:
    a cancellation can be lost on the way.  Python 3.11's ``wait_for`` returns
    a result that arrives together with the cancellation, and nats-py waits
    through inner tasks, so a stream loop can go on, unaware, retrying a bus
    that is gone, which after ``kill -9`` of ``hourglass up`` it is (seen:
    a loader alive for good, cancelled twice, cycling fetch and consumer_info).
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=1.0)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved, as gather(return_exceptions=True) did
        if pending:
            logger.warning(
                "streams still running after cancellation; cancelling again",
                extra={"streams": ",".join(sorted(t.get_name() for t in pending))},
            )


async def _supervised(
    s: Stream,
    js: JetStreamContext,
    leases: LeaseView,
    settings: Settings,
    metrics: LoaderMetrics,
    space: LakeSpace,
) -> None:
    """Restart one stream's loop after an error without touching the others.

    A restart goes through ``recover`` again, so whatever was processed but not
    flushed is redelivered and processed afresh.  A full disk is handled where
    the lake is written (``until_stored``); one that surfaces anywhere else
    pauses here without a traceback.
    """
    while True:
        try:
            await drive(s, js, leases, settings, metrics, space)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            if not is_disk_full(exc):
                logger.exception("stream loader failed; restarting it", extra={"stream": s.name})
                await asyncio.sleep(1.0)
            else:
                await space.wait(s.name, "recover", exc)
            s.loader = _fresh(s.loader)
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
