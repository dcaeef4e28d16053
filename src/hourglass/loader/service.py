"""``hourglass loader``: one durable pull consumer per stream, each in its own task.

Streams are independent: a slow or broken type delays only itself.  A loader
loads a stream only while it holds the stream's lease (``bus/ownership.py``);
the loaders started on one bus share the streams, each at most its fair share
(``owner.Group``: a joining loader gets streams handed over), and each is the
standby of the streams others own, taking them over within a lease TTL (plus a
second) of their owner's death.  Its saves are fenced: once a standby has
claimed a stream, nothing the old owner writes becomes visible
(``loader/staging.py``).  The heavy work of a stream (Arrow conversion,
Parquet, fsync) runs in a worker thread so the event loop keeps the bus
connection alive and the other streams moving.

A full lake filesystem (ENOSPC, EDQUOT) pauses instead of crashing: the write
that failed (process's quarantine, flush, close) left nothing behind (see
``StreamLoader.flush``) and is tried again every few seconds with the same rows,
which stay in memory and unacknowledged on the bus.  One log line says "lake
filesystem full, pausing", one says when it resumes; ``hourglass_loader_lake_full``
is 1 meanwhile.  See docs/disk-full.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import pyarrow as pa
from nats.js import JetStreamContext
from prometheus_client import start_http_server

from hourglass import log
from hourglass.bus import jetstream
from hourglass.bus.consumer import StreamReader, wait_for_streams
from hourglass.bus.embedded import resolve_bus_url
from hourglass.bus.errors import BusError, BusUnavailable
from hourglass.bus.marks import LeaseView
from hourglass.bus.ownership import Ownership
from hourglass.bus.retention import drop_stale_consumers, loader_durable, retain
from hourglass.config import Settings
from hourglass.exceptions import Fenced, LakeUnavailable
from hourglass.lake.failed import FAILED_DIR
from hourglass.lake.retention import DAY, expire_buckets
from hourglass.loader.compact import Compactor
from hourglass.loader.metrics import (
    LakeSpace,
    LoaderMetrics,
    is_disk_full,
    observe_retention,
)
from hourglass.loader.owner import Group, KvCheckpoints, Unclaimed, announce, own
from hourglass.loader.resources import limit_malloc_arenas, yield_cpu
from hourglass.loader.slo import describe_types
from hourglass.loader.streams import (
    Stream,
    build_streams,
    check_lake,
    check_partitions,
    first_bucket_hint,
    open_lake,
)

logger = log.get("hourglass.loader")

RETAIN_EVERY_S = 5.0  # a retention round per stream at most this often (after a flush)
# After SIGTERM, streams get this long for their stop-time flush (a save waits up
# to SAVE_TIMEOUT_S); then the process exits anyway, as from kill -9.  Below the
# 30 s a new `hourglass up` waits for the previous run's processes.
STOP_DEADLINE_S = 20.0


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
        await space.wait(s.label, what, exc)
        return []
    space.wrote(s.label, what)
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


@dataclass
class Runner:
    """What every stream's loop shares: the bus, the leases, settings, metrics, the lake."""

    js: JetStreamContext
    leases: LeaseView
    ownership: Ownership
    settings: Settings
    metrics: LoaderMetrics
    space: LakeSpace
    group: Group = field(default_factory=lambda: Group(0))
    compactor: Compactor = field(init=False)

    def __post_init__(self) -> None:
        self.compactor = Compactor(self.settings.compact_target_bytes, self.metrics)

    async def owned(self, s: Stream) -> None:
        """Load ``s`` while this loader owns it; be its standby while another does."""
        await own(
            self.ownership,
            s.stream,
            s.label,
            self.metrics,
            self.group,
            partial(self._claimed, s),
            partial(self._standby, s),
        )

    async def _standby(self, s: Stream) -> None:
        """While another loader owns ``s``: nothing to keep warm.  The dedup index
        is in the lake (``dedup.py``) and a takeover reads it as it stands."""
        return None

    async def _claimed(self, s: Stream) -> None:
        """Claim ``s``'s checkpoint and load the stream from it."""
        checkpoints = await KvCheckpoints.claim(
            self.ownership,
            s.stream,
            self.settings.lake_id,
            s.legacy,
            self.metrics.checkpoint_bytes.labels(s.label).set,
        )
        s.loader = s.loader.fresh(checkpoints)
        self.metrics.owned.labels(s.label).set(1)
        logger.info("owner of the stream", extra={"stream": s.label, "epoch": checkpoints.epoch})
        try:
            await self.supervised(s)
        finally:
            # Whatever happens next starts from the checkpoint: this index holds
            # uncommitted keys, and its memory is given back.
            s.loader = s.loader.fresh(Unclaimed())

    async def supervised(self, s: Stream) -> None:
        """Restart one stream's loop after an error without touching the others.

        A restart goes through ``recover`` again, so whatever was processed but
        not flushed is redelivered and processed afresh.  A full disk is handled
        where the lake is written (``until_stored``); one that surfaces anywhere
        else pauses here without a traceback.  Told to stop (lease lost, handed
        over), it stops even if nats-py turned the cancellation into an error of
        its own: restarted without a lease, it ran for good (seen).
        """
        while True:
            try:
                await self.drive(s)
            except (asyncio.CancelledError, Fenced):
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                if isinstance(exc, OSError) and is_disk_full(exc):
                    await self.space.wait(s.label, "recover", exc)
                else:
                    if isinstance(exc, (BusUnavailable, LakeUnavailable)):
                        why = {"stream": s.label, "error": str(exc)}
                        what = "bus" if isinstance(exc, BusUnavailable) else "lake"
                        logger.warning(f"{what} unavailable; restarting the stream", extra=why)
                    else:
                        logger.exception(
                            "stream loader failed; restarting it", extra={"stream": s.label}
                        )
                    await asyncio.sleep(1.0)
            s.loader = s.loader.fresh()

    async def drive(self, s: Stream) -> None:
        await until_stored(s, self.space, "recover", s.loader.recover)
        await first_bucket_hint(self.js, self.settings, s)
        durable = loader_durable(s.loader.checkpoints.epoch)
        reader = StreamReader(self.js, s.stream, s.subject, durable)
        await reader.start(after_seq=s.loader.state.committed_seq)
        await self._drop_stale(s, durable)
        stop = threading.Event()
        compactor = asyncio.create_task(
            self.compactor.run(s.label, lambda: s.loader, stop), name=f"{s.label}-compact"
        )  # (of a partitioned type, only partition 0's merges: compact.compacts)
        try:
            await self._loop(s, reader)
        finally:
            stop.set()  # a merge in its thread stops at its next file
            compactor.cancel()
            # A clean stop (SIGTERM) commits what was processed; a crash does not
            # need to: the messages after the checkpoint come again.
            stale = s.loader.processed_seq > s.loader.state.committed_seq
            if stale and self.ownership.connected():
                await _whole(partial(_flush_on_stop, s))

    async def _loop(self, s: Stream, reader: StreamReader) -> None:
        lag = self.metrics.lag.labels(s.label)
        open_buckets = self.metrics.open.labels(s.label)
        pending = self.metrics.pending.labels(s.label)
        unsealed = self.metrics.unsealed.labels(s.label)
        retained_at = -RETAIN_EVERY_S
        expire_at = 0.0
        while True:
            batch = await reader.gather(s.loader.processed_seq + 1)
            lag.set(batch.pending)
            if batch.messages:
                work = partial(s.loader.process, batch.messages)
                await until_stored(s, self.space, "process", work)
            held = s.loader.pending_bytes()
            pending.set(held)
            self.metrics.arrow.set(pa.total_allocated_bytes())
            due = time.time() - s.loader.last_flush >= self.settings.flush_interval_s
            if due or held > s.pending_max_bytes:
                open_buckets.set(len(s.loader.open_buckets()))
                await until_stored(s, self.space, "flush", s.loader.flush)
                await reader.ack()
                if time.monotonic() - retained_at >= RETAIN_EVERY_S:
                    retained_at = time.monotonic()
                    await self._retain(s)
                    await self._drop_stale(s, reader.durable)
                if self.settings.lake_retention_days and time.monotonic() >= expire_at:
                    expire_at = time.monotonic() + self.settings.lake_retention_check_s
                    await until_stored(s, self.space, "lake retention", partial(self._expire, s))
            # Not retried in place: after a pause the loop fetches and flushes again
            # first, so leases and ``caught_up`` are current when it closes.
            close = partial(
                s.loader.close_ready,
                self.leases.live,
                batch.drained_as_of is not None,
                live_as_of=self.leases.read_at,
                drained_as_of=batch.drained_as_of,
            )
            await stored_once(s, self.space, "close", close)
            unsealed.set(s.loader.unsealed_buckets)

    async def _drop_stale(self, s: Stream, durable: str) -> None:
        try:
            dropped = await drop_stale_consumers(self.js, s.stream, durable)
        except (BusUnavailable, BusError) as exc:
            logger.warning(
                "could not drop stale consumers", extra={"stream": s.label, "error": str(exc)}
            )
            return
        if dropped:
            logger.info(
                "dropped earlier owners' consumers", extra={"stream": s.label, "dropped": dropped}
            )

    async def _retain(self, s: Stream) -> None:
        """Purge committed events outside the replay window or its share of the
        budget (``bus/retention.py``); a bus error waits for the next round."""
        committed = s.loader.state.committed_seq
        try:
            kept = await retain(
                self.js,
                s.stream,
                s.subject,
                committed,
                replay_window_s=self.settings.replay_window_s,
                now=time.time(),
            )
        except (BusUnavailable, BusError) as exc:
            logger.warning("retention round failed", extra={"stream": s.label, "error": str(exc)})
            return
        observe_retention(self.metrics, s.label, kept, committed)

    def _expire(self, s: Stream) -> None:
        """Lake retention for one stream (in a worker thread: it removes folders)."""
        loader = s.loader
        if loader.closes and loader.state.next_close is None:
            return  # nothing closed yet: nothing may go
        if loader.partition.index not in (None, 0):
            return  # a partitioned type's buckets: partition 0's loader expires them
        # A partition closed them: the ones still waiting for others are not closed.
        closed = loader.state.next_close
        if closed is not None and loader.state.unsealed is not None:
            closed = min(closed, loader.state.unsealed)
        expire_buckets(
            loader.lake,
            s.name,
            loader.width,
            days=self.settings.lake_retention_days,
            closed_before=closed,
            # The audit may still read the bucket's tallies from the bus this long.
            keep_records_s=max(self.settings.replay_window_s, self.settings.stream_max_age_s)
            + 2 * DAY,
        )


def _flush_on_stop(s: Stream) -> None:
    try:
        s.loader.flush()
    except (OSError, Fenced) as exc:
        # Raising here would replace the cancellation that stops the loader.
        # Nothing is lost: what is not committed is read from the bus again.
        logger.warning(
            "could not flush on stop; the messages after the checkpoint are read again "
            "at the next start",
            extra={"stream": s.label, "error": str(exc)},
        )
    else:
        logger.info("flushed on stop", extra={"stream": s.label})


async def run_loader(settings: Settings) -> None:
    limit_malloc_arenas()  # before the loader's threads: see resources.py
    if settings.loader_nice:
        yield_cpu(settings.loader_nice)
    metrics = LoaderMetrics()
    space = LakeSpace(settings.lake_path, metrics)
    if settings.loader_metrics_port:
        start_http_server(
            settings.loader_metrics_port, addr=settings.host, registry=metrics.registry
        )
    store = await open_lake(settings, space)
    streams = build_streams(settings, metrics, store)
    describe_types(metrics.registry, settings, sorted({s.name for s in streams} - {FAILED_DIR}))
    url = resolve_bus_url(settings)
    nc = await jetstream.connect(url, name="hourglass-loader")
    js = nc.jetstream(timeout=10)
    await check_partitions(js, settings, streams, store)
    await wait_for_streams(js, [s.stream for s in streams])
    ownership = Ownership(
        js,
        ttl_s=settings.loader_lease_ttl_s,
        replicas=settings.stream_replicas or (3 if settings.bus else 1),
        connected=lambda: nc.is_connected,
    )
    await ownership.open()
    await check_lake(ownership, settings, streams)
    group = Group(len(streams), balance=settings.loader_balance)
    try:  # the group as it is before taking any stream: a joining loader takes its share
        await ownership.announce([])
        group.members = await ownership.members()
    except (BusUnavailable, BusError) as exc:
        logger.warning("could not count the loaders", extra={"error": str(exc)})
    runner = Runner(js, LeaseView(js), ownership, settings, metrics, space, group)
    tasks = [
        asyncio.create_task(runner.leases.run(), name="leases"),
        asyncio.create_task(announce(ownership, group), name="announce"),
    ]
    tasks += [asyncio.create_task(runner.owned(s), name=s.label) for s in streams]
    logger.info(
        "loader running",
        extra={"streams": len(streams), "bus": url, "lake": settings.lake_url},
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        logger.info("loader stopped")
    finally:
        if not await _stop_all(tasks):
            # Every write is crash-safe: stopping here is a kill -9, nothing
            # committed is lost and the next owner reads the rest again.  A
            # worker thread may still block (a save to a bus that is gone),
            # and the interpreter would wait for it at exit: leave now.
            logger.error(
                "streams did not stop in time; exiting without them",
                extra={"deadline_s": STOP_DEADLINE_S},
            )
            logging.shutdown()
            os._exit(1)
        await ownership.leave()
        await nc.close()


async def _stop_all(tasks: list[asyncio.Task[None]]) -> bool:
    """Cancel every task and wait until each has finished (its stop-time flush);
    False if some still run after ``STOP_DEADLINE_S``.

    A task still running a second after its cancellation is cancelled again:
    a cancellation can be lost on the way.  Python 3.11's ``wait_for`` returns
    a result that arrives together with the cancellation, and nats-py waits
    through inner tasks, so a stream loop can go on, unaware, retrying a bus
    that is gone, which after ``kill -9`` of ``hourglass up`` it is (seen:
    a loader alive for good, cancelled twice, cycling fetch and consumer_info;
    and, in CI, a loader stopped 0.2 s after start whose retention round waited
    out two 10 s bus timeouts, past the 30 s a new ``hourglass up`` waits).
    """
    pending = set(tasks)
    deadline = time.monotonic() + STOP_DEADLINE_S
    while pending:
        if time.monotonic() >= deadline:
            return False
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
    return True
