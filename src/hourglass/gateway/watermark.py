"""Watermark markers and the gateway's lease: how the loader knows an hour is complete.

A marker with watermark ``W`` published into a stream promises: *every event this
gateway stamped with ``received_at < W`` is before this marker in the stream*.
It holds because ``W`` is the oldest ``received_at`` of the requests still in
flight (or now, if none): every older event was already acknowledged by
JetStream, so it has a lower stream sequence than the marker published after.
Stamping a request and registering it here happen with no ``await`` between,
so no marker can slip in.

The lease is a key per gateway in the NATS KV bucket ``hg_gateways`` whose
entries expire after ``lease_ttl_s``; it is renewed with every round of markers.
The marker and lease formats are the bus's (``bus/marks.py``); this module is
the gateway's side of them.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from hourglass import log
from hourglass.bus.errors import BusError, BusUnavailable, map_nats_errors
from hourglass.bus.marks import KIND, WATERMARK_KIND, Lease, Marker, open_leases
from hourglass.gateway.metrics import GatewayMetrics

logger = log.get("hourglass.gateway")


class InFlight:
    """Receive stamps (µs) of requests not yet answered."""

    def __init__(self) -> None:
        self._stamps: dict[int, int] = {}

    def enter(self, stamp_us: int) -> None:
        self._stamps[stamp_us] = self._stamps.get(stamp_us, 0) + 1

    def leave(self, stamp_us: int) -> None:
        left = self._stamps[stamp_us] - 1
        if left:
            self._stamps[stamp_us] = left
        else:
            del self._stamps[stamp_us]

    def watermark(self, now_us: int) -> int:
        return min(self._stamps, default=now_us)


class Heartbeat:
    """Renews the lease and publishes a marker into every stream, every ``interval``."""

    def __init__(
        self,
        js: JetStreamContext,
        gateway_id: str,
        subjects: list[str],
        inflight: InFlight,
        *,
        interval: float,
        ttl_s: float,
        replicas: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._js = js
        self._metrics = metrics
        if metrics is not None:
            metrics.lease_ttl.set(ttl_s)
        self._id = gateway_id
        self._subjects = subjects
        self._inflight = inflight
        self._interval = interval
        self._ttl = ttl_s
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def beat(self) -> None:
        """Renew the lease, then publish a marker into every stream.

        Raises :class:`BusUnavailable` or :class:`BusError`; the next beat tries again.
        """
        with map_nats_errors("heartbeat"):
            if self._kv is None:
                self._kv = await open_leases(self._js, ttl_s=self._ttl, replicas=self._replicas)
            watermark = self._inflight.watermark(time.time_ns() // 1000)
            marker = msgspec.json.encode(Marker(self._id, watermark))
            lease = Lease(self._id, watermark)
            if self._metrics is not None:
                lease.requests, lease.latency_le, lease.latency_counts = self._metrics.answered()
            # The lease first: a marker needs a live owner.
            await self._kv.put(self._id, msgspec.json.encode(lease))
            await asyncio.gather(
                *(
                    self._js.publish(s, marker, headers={KIND: WATERMARK_KIND}, timeout=5)
                    for s in self._subjects
                )
            )
        if self._metrics is not None:
            self._metrics.lease_renewed.set(time.time())

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except (BusUnavailable, BusError) as exc:
                if self._metrics is not None:
                    self._metrics.heartbeat_failures.inc()
                logger.warning("heartbeat failed", extra={"error": repr(exc.__cause__ or exc)})
            await asyncio.sleep(self._interval)

    async def retire(self) -> None:
        """Last markers, then drop the lease: the loader stops waiting for us."""
        try:
            await self.beat()
            if self._kv is not None:
                with map_nats_errors("drop the lease"):
                    await self._kv.delete(self._id)
        except (BusUnavailable, BusError) as exc:
            logger.warning(
                "could not retire the lease", extra={"error": repr(exc.__cause__ or exc)}
            )
