"""Who loads a stream: an expiring lease per stream, and a fenced checkpoint record.

Two KV buckets:

* ``hg_loaders``, whose entries expire ``loader_lease_ttl_s`` after their last
  write: ``owner.<stream>`` is the lease of the loader that owns the stream,
  ``member.<loader>`` says a loader is alive and which streams it owns (what
  ``hourglass status`` shows as owners and standbys).
* ``hg_checkpoints``, no expiry, history 1: ``<stream>`` is the stream's
  :class:`Record`, the owner's epoch around the loader's checkpoint (opaque here).

**The lease says who should load a stream; the record decides who can commit.**

1. *Acquire*: ``create(owner.<stream>)`` succeeds only while no lease is live.
   The owner renews it with a revision-checked ``update`` every third of the
   TTL; a loader killed, paused or cut off stops renewing and the lease is gone
   a TTL later, when a standby's ``create`` succeeds.
2. *Claim*: the new owner reads the record (revision ``R``, epoch ``e``) and
   writes it back with epoch ``e + 1`` and ``last=R``.  Every commit after that
   is an ``update`` with ``last=`` the revision it wrote itself.  So once a
   claim lands, every write of an earlier owner fails (:class:`Fenced`),
   whatever the clocks say and however long it was paused: the stream has one
   committer at a time.  A paused owner that wakes up finds out at its next
   commit or renewal, whichever comes first, and stops.
3. *Epoch*: the loader stamps the files it stages with its epoch and makes them
   visible only after the commit that names them (``loader/stream.py``), so a
   fenced owner can leave staged files behind but nothing a reader sees.  An
   owner's recovery deletes only staged files of its own or earlier epochs:
   never anything a later owner may have written.

What is on disk when: every KV write is a JetStream publish (fsynced on the
embedded bus, replicated on a cluster) acknowledged before the call returns.
A commit that times out may or may not have landed; the caller must read the
record again (:meth:`Ownership.claim`) rather than guess.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from hourglass import log
from hourglass.bus.errors import BusConflict, BusError, BusNotFound, BusUnavailable, map_nats_errors
from hourglass.bus.marks import list_keys, read_entries
from hourglass.exceptions import ConfigError, Fenced

__all__ = ["CHECKPOINT_BUCKET", "LOADER_BUCKET", "Held", "Lease", "Ownership", "Record"]

logger = log.get("hourglass.bus")

LOADER_BUCKET = "hg_loaders"
CHECKPOINT_BUCKET = "hg_checkpoints"
CHECKPOINT_MAX_BYTES = 1 << 20  # one record; a checkpoint is a few KiB (markers are pruned)
CLAIM_ATTEMPTS = 50
RELEASE_WAIT_S = 2.0


class Lease(msgspec.Struct):
    """The value of ``owner.<stream>`` and, with ``owns``, of ``member.<loader>``."""

    loader: str
    host: str
    pid: int
    since: float  # epoch seconds
    owns: list[str] = []


class Record(msgspec.Struct):
    epoch: int  # one more with every claim: stamps the owner's staged files
    owner: str
    lake: str  # where the owner writes: a standby writing elsewhere must not take over
    body: msgspec.Raw = msgspec.Raw(b"null")


@dataclass
class Held:
    """A lease this process holds: the revision of its last write, and when that was."""

    stream: str
    revision: int
    renewed: float  # time.monotonic() of the last successful write


def new_loader_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Ownership:
    """This loader's side of the two buckets (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        ttl_s: float,
        replicas: int,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self.js = js
        # Whether the connection is up now: a stopping loader does not wait out
        # timeouts of a bus that is gone (kill -9 of `hourglass up`).
        self.connected = connected
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.me = Lease(new_loader_id(), socket.gethostname(), os.getpid(), time.time())
        self._leases: KeyValue | None = None
        self._records: KeyValue | None = None

    async def open(self) -> None:
        self._leases = await _bucket(
            self.js, KeyValueConfig(bucket=LOADER_BUCKET, ttl=self.ttl_s), self.replicas
        )
        with map_nats_errors("read the loader lease bucket"):
            ttl = (await self._leases.status()).ttl
        if ttl and abs(ttl - self.ttl_s) > 0.001:
            # The bucket keeps the TTL it was created with; renewing at a third
            # of another would let leases lapse between renewals.
            logger.warning(
                "the loader lease bucket keeps the TTL it was created with",
                extra={"configured_s": self.ttl_s, "used_s": ttl},
            )
            self.ttl_s = ttl
        self._records = await _bucket(
            self.js,
            KeyValueConfig(
                bucket=CHECKPOINT_BUCKET,
                max_value_size=CHECKPOINT_MAX_BYTES,
                # history 1: the bucket holds one record per stream, no more
                max_bytes=64 * CHECKPOINT_MAX_BYTES,
            ),
            self.replicas,
        )

    @property
    def leases(self) -> KeyValue:
        assert self._leases is not None, "open() first"
        return self._leases

    @property
    def records(self) -> KeyValue:
        assert self._records is not None, "open() first"
        return self._records

    # ------------------------------------------------------------------ leases

    async def owner_of(self, stream: str) -> tuple[Lease, int] | None:
        """The stream's live lease and its revision, or None."""
        try:
            with map_nats_errors(f"read the lease of {stream}"):
                entry = await self.leases.get(f"owner.{stream}")
        except BusNotFound:
            return None
        if entry.value is None:
            return None
        return msgspec.json.decode(entry.value, type=Lease), int(entry.revision or 0)

    async def try_acquire(self, stream: str) -> Held | None:
        """The stream's lease if no other loader holds it (ours from before is kept)."""
        key = f"owner.{stream}"
        value = msgspec.json.encode(self.me)
        try:
            with map_nats_errors(f"take the lease of {stream}"):
                revision = await self.leases.create(key, value)
        except BusNotFound:
            # nats-py's create() re-reads a key it found taken, to see whether it
            # was deleted; the lease expired in between (seen in CI).  Next poll.
            return None
        except BusConflict:
            held = await self.owner_of(stream)
            if held is None or held[0].loader != self.me.loader:
                return None
            try:  # our own lease (a claim lost its record): keep it
                with map_nats_errors(f"renew the lease of {stream}"):
                    revision = await self.leases.update(key, value, last=held[1])
            except BusConflict:
                return None
        return Held(stream, revision, time.monotonic())

    async def renew(self, held: Held) -> bool:
        """Renew ``held``; False once it is lost: taken over, or not renewed for a TTL."""
        try:
            with map_nats_errors(f"renew the lease of {held.stream}"):
                held.revision = await self.leases.update(
                    f"owner.{held.stream}", msgspec.json.encode(self.me), last=held.revision
                )
        except (BusConflict, BusNotFound):
            return False
        except (BusUnavailable, BusError) as exc:
            alive = time.monotonic() - held.renewed < self.ttl_s
            logger.warning(
                "could not renew the stream's lease",
                extra={"stream": held.stream, "error": str(exc), "still_held": alive},
            )
            return alive
        held.renewed = time.monotonic()
        return True

    async def release(self, held: Held) -> None:
        """Give the lease up (a clean stop), so that a standby need not wait a TTL."""
        if not self.connected():
            return  # it expires
        try:
            with map_nats_errors(f"release the lease of {held.stream}"):
                await asyncio.wait_for(
                    self.leases.delete(f"owner.{held.stream}", last=held.revision), RELEASE_WAIT_S
                )
        except (BusError, BusUnavailable) as exc:  # taken over already, or no bus: it expires
            logger.info("lease not released", extra={"stream": held.stream, "error": str(exc)})

    async def announce(self, owns: list[str]) -> None:
        """Say this loader is alive and what it owns (``member.<loader>``)."""
        self.me.owns = sorted(owns)
        with map_nats_errors("announce the loader"):
            await self.leases.put(f"member.{self.me.loader}", msgspec.json.encode(self.me))

    async def members(self) -> int:
        """How many loaders are live now (their ``member.<loader>`` keys), at least 1."""
        keys = [k for k in await list_keys(self.js, LOADER_BUCKET) if k.startswith("member.")]
        return max(1, len(await read_entries(self.leases, keys)))

    async def leave(self) -> None:
        """A clean stop: remove ``member.<loader>`` now rather than at its expiry,
        so that ``hourglass status`` does not list a stopped loader as a standby."""
        if not self.connected():
            return
        try:
            with map_nats_errors("remove the loader's member key"):
                await asyncio.wait_for(
                    self.leases.delete(f"member.{self.me.loader}"), RELEASE_WAIT_S
                )
        except (BusError, BusUnavailable) as exc:
            logger.info("member key not removed; it expires", extra={"error": str(exc)})

    # ----------------------------------------------------------------- records

    async def read_record(self, stream: str) -> tuple[Record | None, int]:
        """The stream's record and its revision; ``(None, 0)`` if it has none."""
        return await read_record(self.js, stream, self._records)

    async def claim(self, stream: str, lake: str) -> tuple[Record, int]:
        """Take the stream's record for this loader (the caller holds the lease):
        the record as claimed (its body as found, ``null`` if new), and its revision.

        Raises :class:`ConfigError` if the stream's owner wrote to another lake.
        """
        for _ in range(CLAIM_ATTEMPTS):
            found, revision = await self.read_record(stream)
            if found is not None and found.lake != lake:
                raise ConfigError(
                    f"stream {stream} is loaded into {found.lake} (by {found.owner}); "
                    f"this loader writes to {lake}: every loader of a stream must share its lake"
                )
            claimed = Record(
                epoch=(found.epoch if found else 0) + 1,
                owner=self.me.loader,
                lake=lake,
                body=found.body if found else msgspec.Raw(b"null"),
            )
            try:
                return claimed, await self._write(stream, claimed, revision)
            except BusConflict:
                await asyncio.sleep(0.1)  # an earlier owner committed meanwhile: read again
        raise BusError(f"stream {stream}: the record changed {CLAIM_ATTEMPTS} times during a claim")

    async def commit(self, stream: str, record: Record, last: int) -> int:
        """Write ``record`` over revision ``last``; :class:`Fenced` if that is not the newest."""
        try:
            return await self._write(stream, record, last)
        except BusConflict as exc:
            raise Fenced(f"stream {stream}: another loader claimed it") from exc

    async def _write(self, stream: str, record: Record, last: int) -> int:
        value = msgspec.json.encode(record)
        with map_nats_errors(f"write the checkpoint of {stream}"):
            if last == 0:
                return int(await self.records.create(stream, value))
            return int(await self.records.update(stream, value, last=last))


async def read_record(
    js: JetStreamContext, stream: str, kv: KeyValue | None = None
) -> tuple[Record | None, int]:
    """``stream``'s record and revision, ``(None, 0)`` if none (for status and audit too)."""
    try:
        with map_nats_errors(f"read the checkpoint of {stream}"):
            if kv is None:
                kv = await js.key_value(CHECKPOINT_BUCKET)
            entry = await kv.get(stream)
    except BusNotFound:
        return None, 0
    if entry.value is None:
        return None, int(entry.revision or 0)
    return msgspec.json.decode(entry.value, type=Record), int(entry.revision or 0)


async def read_loaders(js: JetStreamContext) -> tuple[dict[str, Lease], list[Lease]]:
    """For ``hourglass status``: each stream's owner, and every live loader."""
    try:
        with map_nats_errors("list the loaders"):
            kv = await js.key_value(LOADER_BUCKET)
    except BusNotFound:
        return {}, []
    keys = await list_keys(js, LOADER_BUCKET)
    owners: dict[str, Lease] = {}
    members: list[Lease] = []
    for key, value in (await read_entries(kv, keys)).items():
        lease = msgspec.json.decode(value, type=Lease)
        kind, _, name = key.partition(".")
        if kind == "owner":
            owners[name] = lease
        elif kind == "member":
            members.append(lease)
    return owners, members


async def _bucket(js: JetStreamContext, config: KeyValueConfig, replicas: int) -> KeyValue:
    config.history = 1
    config.storage = StorageType.FILE
    config.replicas = replicas
    try:
        with map_nats_errors(f"open the KV bucket {config.bucket}"):
            return await js.key_value(config.bucket)
    except BusNotFound:
        with map_nats_errors(f"create the KV bucket {config.bucket}"):
            return await js.create_key_value(config)
