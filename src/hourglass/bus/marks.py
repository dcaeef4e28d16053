"""The gateway↔loader contract on the bus: watermark markers and gateway leases.

A marker with watermark ``W`` published into a stream promises: *every event
this gateway stamped with ``received_at < W`` is before this marker in the
stream* (``gateway/watermark.py`` keeps that promise).  Markers travel on the
type's subject with ``Hg-Kind: watermark``; event batches carry ``Hg-Kind:
batch``.

A lease is a key per gateway in the NATS KV bucket ``hg_gateways`` whose entries
expire after ``lease_ttl_s``; gateways renew theirs with every round of
markers.  The loader waits for the markers of live gateways only
(:class:`LeaseView`): a gateway killed without deregistering holds buckets open
until its lease expires, no longer.

Both sides import this module, and it imports neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from hourglass import log
from hourglass.bus.errors import BusError, BusNotFound, BusUnavailable, map_nats_errors
from hourglass.bus.jetstream import KIND

__all__ = [
    "BATCH_KIND",
    "KIND",
    "LEASE_BUCKET",
    "Lease",
    "WATERMARK_KIND",
    "LeaseView",
    "Marker",
    "read_leases",
]

logger = log.get("hourglass.bus")

LEASE_BUCKET = "hg_gateways"
BATCH_KIND = "batch"
WATERMARK_KIND = "watermark"


class Marker(msgspec.Struct):
    """The body of a watermark message, and the value of a gateway's lease."""

    gateway: str
    watermark: int  # µs since the epoch


class Lease(Marker):
    """A gateway's lease: its last marker and, for the dashboard, what it has
    answered so far (cumulative, as Prometheus counts): requests, and their
    latency as cumulative histogram counts at each of the ``latency_le`` bounds
    and then of all (one more count than bounds: JSON has no ``+Inf``).  A lease
    of an earlier version has none; a reader of an earlier version ignores them."""

    requests: int = 0
    latency_le: list[float] = []
    latency_counts: list[int] = []


async def open_leases(js: JetStreamContext, *, ttl_s: float, replicas: int) -> KeyValue:
    """The lease bucket, created on first use."""
    try:
        with map_nats_errors("open the lease bucket"):
            return await js.key_value(LEASE_BUCKET)
    except BusNotFound:
        config = KeyValueConfig(
            bucket=LEASE_BUCKET, ttl=ttl_s, history=1, storage=StorageType.FILE, replicas=replicas
        )
        with map_nats_errors("create the lease bucket"):
            return await js.create_key_value(config)


async def read_leases(js: JetStreamContext) -> dict[str, Lease]:
    """Every live gateway's lease (its last watermark); empty if none ever ran.

    Raises :class:`~hourglass.exceptions.BusUnavailable` if the bus does not answer.
    """
    keys = await live_gateways(js)
    if not keys:
        return {}
    with map_nats_errors("open the lease bucket"):
        kv = await js.key_value(LEASE_BUCKET)
    return {key: _lease(value) for key, value in (await read_entries(kv, keys)).items()}


def _lease(value: bytes) -> Lease:
    """A lease; one whose extra fields do not decode (another version's) is its marker."""
    try:
        return msgspec.json.decode(value, type=Lease)
    except msgspec.ValidationError:
        marker = msgspec.json.decode(value, type=Marker)
        return Lease(marker.gateway, marker.watermark)


async def read_entries(kv: KeyValue, keys: Iterable[str]) -> dict[str, bytes]:
    """The value of each of ``keys`` still there: an entry may expire (a lease) or be
    deleted between the listing and the read, which is not an error."""
    values = {}
    for key in keys:
        try:
            with map_nats_errors(f"read {key}"):
                entry = await kv.get(key)
        except BusNotFound:
            continue
        if entry.value:
            values[key] = entry.value
    return values


class LeaseView:
    """The set of live gateways, from the lease KV bucket; None until first read."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.live: set[str] | None = None
        self.read_at = 0.0  # wall clock when the current view's read began

    async def run(self, interval: float = 0.5) -> None:
        while True:
            started = time.time()
            try:
                self.live = await live_gateways(self._js)
            except (BusUnavailable, BusError) as exc:
                self.live = None
                logger.warning("leases unknown", extra={"error": str(exc)})
            else:
                self.read_at = started
            await asyncio.sleep(interval)


async def live_gateways(js: JetStreamContext) -> set[str]:
    """The gateways holding a lease now; empty if none ever ran."""
    try:
        with map_nats_errors("list the gateway leases"):
            kv = await js.key_value(LEASE_BUCKET)
    except BusNotFound:  # no bucket: no gateway ever ran
        return set()
    return set(await read_entries(kv, await list_keys(js, LEASE_BUCKET)))


async def list_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys of a KV bucket with an entry (a delete marker included: read them).

    From the stream's per-subject counts, not ``KeyValue.keys()``: that creates
    a consumer each call which the server keeps for nats-py's 5-minute
    inactivity threshold, so a loader listing leases twice a second ran into
    "maximum consumers limit reached" within minutes (815 consumers, measured).
    """
    prefix = f"$KV.{bucket}."
    try:
        with map_nats_errors(f"list the keys of {bucket}"):
            info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    except BusNotFound:
        return []
    return [subject.removeprefix(prefix) for subject in info.state.subjects or {}]
