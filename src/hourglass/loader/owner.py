"""The loader's side of stream ownership: a fenced checkpoint, and holding a lease.

:class:`KvCheckpoints` keeps one stream's checkpoint in its bus record
(``bus/ownership.py``): a save is a revision-checked write over the revision
this loader wrote last, so a loader that lost the stream cannot save
(:class:`Fenced`), and neither can one whose last save timed out: that save may
have landed, so the only safe next step is to claim the record again and start
from what it says.

:func:`hold` runs one stream's work while renewing its lease, and stops the work
when the lease is lost.  The work's saves are fenced anyway; stopping it early
only saves a fenced loader the effort of work it cannot commit.

**A fair share** (:class:`Group`): every loader of a bus loads at most
``ceil(streams / live loaders)`` streams.  Below it, a loader takes any stream
whose lease is free (a dead owner's, one handed over); at it, it takes none;
above it (a loader joined), it hands over one stream per lease renewal, the
last of its streams by name, as a clean stop does: its work stops and flushes,
then the lease is released, and a loader below its share takes it within a
second.  Nothing coordinates this but the leases and each loader's count of
live members, so no two loaders need agree at the same moment: a stream is
only ever taken through its lease, whatever either believes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from nats.js import JetStreamContext

from hourglass import log
from hourglass.bus.errors import BusError, BusUnavailable
from hourglass.bus.ownership import Held, Ownership, Record, read_record
from hourglass.exceptions import Fenced
from hourglass.loader.metrics import LoaderMetrics
from hourglass.loader.state import LoaderState, Saved, legacy_saved

logger = log.get("hourglass.loader")

SAVE_TIMEOUT_S = 10.0  # the bus's own request timeout is as long
STANDBY_POLL_S = 1.0  # a standby tries to take its stream's lease this often


class Group:
    """This loader's view of its group: the streams it could load, the live
    loaders (``members``, read at every announcement), the streams it owns."""

    def __init__(self, streams: int, *, balance: bool = True) -> None:
        self.streams = streams
        self.balance = balance  # False: every stream is this loader's share
        self.members = 1
        self.owns: set[str] = set()
        self.taking = 0  # leases being asked for right now (counted in the share)

    @property
    def share(self) -> int:
        return -(-self.streams // max(1, self.members if self.balance else 1))

    def may_take(self, name: str) -> bool:
        return name in self.owns or len(self.owns) + self.taking < self.share

    def should_hand_over(self, name: str) -> bool:
        """One stream at a time: the last by name, while more than the share."""
        return len(self.owns) > self.share and name == max(self.owns)


class KvCheckpoints:
    """One stream's checkpoint in its record, as claimed by this loader."""

    def __init__(
        self,
        ownership: Ownership,
        stream: str,
        record: Record,
        revision: int,
        saved: Saved,
        loop: asyncio.AbstractEventLoop,
        on_saved: Callable[[int], None] | None = None,
    ) -> None:
        self.ownership = ownership
        self.stream = stream
        self.record = record
        self.revision = revision
        self.epoch = record.epoch
        self._saved = saved
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made in the loop, by claim()
        self._on_saved = on_saved  # the record's size in bytes, for a metric

    @classmethod
    async def claim(
        cls,
        ownership: Ownership,
        stream: str,
        lake: str,
        legacy: Path,
        on_saved: Callable[[int], None] | None = None,
    ) -> KvCheckpoints:
        """Claim ``stream``'s record; a stream with none yet starts from ``legacy``
        (the local checkpoint file of an earlier version) if there is one."""
        record, revision = await ownership.claim(stream, lake)
        saved = msgspec.json.decode(record.body, type=Saved | None)
        loop = asyncio.get_running_loop()
        if saved is None:
            saved = legacy_saved(legacy) or Saved()
            if saved.legacy:
                body = msgspec.Raw(msgspec.json.encode(saved))
                record = Record(record.epoch, record.owner, record.lake, body)
                revision = await ownership.commit(stream, record, revision)
                os.replace(legacy, legacy.with_name(legacy.name + ".imported"))
                logger.info(
                    "checkpoint imported into the bus",
                    extra={"stream": stream, "from": str(legacy)},
                )
        return cls(ownership, stream, record, revision, saved, loop, on_saved)

    def load(self) -> Saved:
        """A copy of the last save: the loader changes its state in place between
        saves, and a restart must start from what was saved, not from that."""
        return msgspec.json.decode(msgspec.json.encode(self._saved), type=Saved)

    def save(self, saved: Saved) -> None:
        """Save from a worker thread (the loader's writes run in one), through the loop."""
        assert threading.get_ident() != self._loop_thread, "save() blocks: call it in a thread"
        body = msgspec.Raw(msgspec.json.encode(saved))
        record = Record(self.record.epoch, self.record.owner, self.record.lake, body)
        self.revision = self._call(self.ownership.commit(self.stream, record, self.revision))
        self._saved = saved
        if self._on_saved is not None:
            self._on_saved(len(body))

    def _call(self, work: Coroutine[Any, Any, int]) -> int:
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(timeout=SAVE_TIMEOUT_S)
        except Fenced:
            raise
        except (BusUnavailable, BusError, TimeoutError) as exc:
            future.cancel()
            raise Fenced(
                f"stream {self.stream}: the checkpoint save may or may not have landed "
                f"({exc}); claiming the stream again"
            ) from exc


async def hold(
    ownership: Ownership,
    held: Held,
    work: Coroutine[Any, Any, None],
    hand_over: Callable[[], bool] = lambda: False,
) -> bool:
    """Run ``work`` while renewing ``held``; True if it ended because the lease was lost.

    Cancelled (the loader stops), or ``hand_over()`` at a renewal (more than a
    fair share), it cancels ``work`` and waits for it to end (its stop-time
    flush) before giving the lease up for another loader to take.
    """
    task = asyncio.ensure_future(work)
    lost = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=ownership.ttl_s / 3)
            if done:
                task.result()
                return False
            if not await ownership.renew(held):
                lost = True
                logger.warning(
                    "lost the stream's lease; stopping it (what is not committed is read "
                    "again by the new owner)",
                    extra={"stream": held.stream},
                )
                return True
            if hand_over():
                logger.info(
                    "handing the stream over: this loader has more than its share",
                    extra={"stream": held.stream},
                )
                return False
    finally:
        try:
            await finish(task)
        finally:
            if not lost:
                await ownership.release(held)


async def finish(task: asyncio.Future[None]) -> None:
    """Cancel ``task`` and wait until it has ended, through cancellations of our own
    (a stop-time flush runs in a thread and cannot be cut short); ours is raised then."""
    cancelled = False
    task.cancel()
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if not task.cancelled():
        task.exception()  # retrieved: the caller raised it already, or the lease was lost
    if cancelled:
        raise asyncio.CancelledError


class Unclaimed:
    """The checkpoints of a stream this loader has not claimed: nothing to load or save."""

    epoch = 0

    def load(self) -> Saved:
        raise Fenced("the stream is not claimed")

    def save(self, saved: Saved) -> None:
        raise Fenced("the stream is not claimed")


async def read_checkpoint(js: JetStreamContext, stream: str, legacy: Path) -> LoaderState:
    """``stream``'s checkpoint as its owner last saved it (for ``status`` and ``audit``);
    an earlier version's local file if the bus has none yet; empty if neither."""
    return (await read_saved(js, stream, legacy)).state


async def read_saved(js: JetStreamContext, stream: str, legacy: Path) -> Saved:
    """Like :func:`read_checkpoint`, with the staged files and the dedup index."""
    record, _ = await read_record(js, stream)
    saved = msgspec.json.decode(record.body, type=Saved | None) if record else None
    if saved is None:
        saved = legacy_saved(legacy) or Saved()
    return saved


async def own(
    ownership: Ownership,
    stream: str,
    name: str,
    metrics: LoaderMetrics,
    group: Group,
    load: Callable[[], Coroutine[Any, Any, None]],
    idle: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Run ``load()`` (claim the stream, load it) while this loader holds ``stream``'s
    lease; while another loader holds it, or this one has its share (``Group``),
    stand by: ``idle()`` (keep warm), and try again every second."""
    standby_since: float | None = None
    owns = group.owns
    while True:
        if not group.may_take(name):
            if standby_since is None:
                standby_since = time.monotonic()
                logger.info(
                    "standby: this loader has its share of streams",
                    extra={"stream": name, "share": group.share, "members": group.members},
                )
            await idle()
            await asyncio.sleep(STANDBY_POLL_S)
            continue
        held, known = await _ask(ownership, stream, name, group)
        if not known:
            await asyncio.sleep(STANDBY_POLL_S)
            continue
        if held is None:
            if standby_since is None:
                standby_since = time.monotonic()
                await _say_standby(ownership, stream, name)
            await idle()
            await asyncio.sleep(STANDBY_POLL_S)
            continue
        if standby_since is not None:
            metrics.takeovers.labels(name).inc()
            waited = round(time.monotonic() - standby_since, 1)
            logger.info("took the stream over", extra={"stream": name, "standby_s": waited})
            standby_since = None
        try:
            if await hold(ownership, held, load(), partial(group.should_hand_over, name)):
                metrics.fenced.labels(name).inc()
        except Fenced as exc:
            metrics.fenced.labels(name).inc()
            logger.warning(
                "fenced; claiming the stream again", extra={"stream": name, "error": str(exc)}
            )
        except (BusUnavailable, BusError) as exc:
            logger.warning("could not claim the stream", extra={"stream": name, "error": str(exc)})
            await asyncio.sleep(STANDBY_POLL_S)
        finally:
            owns.discard(name)
            metrics.owned.labels(name).set(0)


async def _ask(
    ownership: Ownership, stream: str, name: str, group: Group
) -> tuple[Held | None, bool]:
    """Try for the stream's lease: (the lease or None, whether the bus answered).
    A place in the share is held across the await: the loader's other streams
    ask at the same moment, and each must see this one counted."""
    group.taking += 1
    try:
        held = await ownership.try_acquire(stream)
    except (BusUnavailable, BusError) as exc:
        logger.warning("lease unknown", extra={"stream": name, "error": str(exc)})
        return None, False
    finally:
        group.taking -= 1
    if held is not None:
        group.owns.add(name)  # no await since the place was given back
    return held, True


async def _say_standby(ownership: Ownership, stream: str, name: str) -> None:
    try:
        owner = await ownership.owner_of(stream)
    except (BusUnavailable, BusError):
        owner = None
    logger.info(
        "standby: another loader owns the stream",
        extra={"stream": name, "owner": owner[0].loader if owner else "?"},
    )


async def announce(ownership: Ownership, group: Group) -> None:
    """Say, every third of a lease TTL, that this loader is alive and what it owns;
    count the live loaders (the group's share follows)."""
    while True:
        try:
            await ownership.announce(sorted(group.owns))
            members = await ownership.members()
            if members != group.members:
                logger.info(
                    "loaders in the group",
                    extra={"members": members, "streams": group.streams},
                )
            group.members = members
        except (BusUnavailable, BusError) as exc:
            logger.warning("could not announce the loader", extra={"error": str(exc)})
        await asyncio.sleep(ownership.ttl_s / 3)
