"""What stays on the bus: events the loader has not committed, and a replay window.

A stream's byte limit (``stream_max_bytes``, ``discard: new``) is a **budget**.
It holds two kinds of message:

* **unconsumed**: after the loader's checkpoint.  Never removed, by anything:
  the streams have no ``max_age``, and every purge here stops at a consumed
  sequence;
* **replay**: consumed (in the lake) but kept for ``replay_window_s`` (24 h by
  default), to replay or audit from the bus.

The replay window gives way first when the budget is short: replay may use at
most ``REPLAY_SHARE`` of the budget *minus* what is unconsumed, so while the
loader keeps up the stream stays at or under half its budget, and when it falls
behind the replay window shrinks to nothing before a single event is refused.
A write is refused (the gateway answers 503) only when unconsumed events alone
fill the budget: the loader is down or far behind.

Two parties purge, both through :func:`keep_from`:

* the loader, every few seconds, from its checkpoint (``committed_seq``): the
  window by time, and the share by bytes;
* a gateway whose write was refused, from the loader consumer's **ack floor**
  (the loader acknowledges only after its checkpoint is saved, so the floor
  is never past it), then it tries the write once more (:class:`RoomMaker`).
  So a stream fills for good only with unconsumed events, even while no
  loader runs to purge.

A purge removes whole messages below a sequence (JetStream's purge-to-seq);
it is one request, atomic on the server.  A crash around it leaves the stream
either as it was or purged: both are within the rule.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from nats.js import JetStreamContext

from hourglass import log
from hourglass.bus.errors import BusNotFound, map_nats_errors

logger = log.get("hourglass.bus")

REPLAY_SHARE = 0.5
LOADER_DURABLE = "hg-loader"  # the prefix of the loader's durable consumers


def loader_durable(epoch: int) -> str:
    """The durable consumer of the owner of ``epoch`` (``bus/ownership.py``).

    One name per owner, not one for all: a fenced owner that wakes up fetches
    from its own consumer, never from its successor's (a fetch takes messages
    out of a consumer's delivery order, and the successor would see them only
    after the ack wait, having taken the bus for drained meanwhile)."""
    return f"{LOADER_DURABLE}-e{epoch}"


async def loader_consumers(js: JetStreamContext, stream: str) -> dict[str, int]:
    """Every loader consumer on ``stream`` (this owner's, and any a fenced one
    left or made again), with its ack floor."""
    try:
        with map_nats_errors(f"list the consumers of {stream}"):
            infos = await js.consumers_info(stream)
    except BusNotFound:
        return {}
    return {
        str(i.name): int(i.ack_floor.stream_seq if i.ack_floor else 0)
        for i in infos
        if str(i.name).startswith(LOADER_DURABLE)
    }


def _epoch_of(durable: str) -> int | None:
    _, _, digits = durable.rpartition("-e")
    return int(digits) if digits.isdigit() else None


async def drop_stale_consumers(js: JetStreamContext, stream: str, durable: str) -> int:
    """Delete the loader consumers on ``stream`` of owners before ``durable``'s
    (earlier epochs); how many.  A consumer made again by a fenced owner is
    dropped by the owner's next call.  Never a later epoch's: a fenced owner
    that does not know it yet calls this too, and must not take its
    successor's consumer away (it did, and the stream stalled while the two
    took turns)."""
    mine = _epoch_of(durable)
    dropped = 0
    for name in await loader_consumers(js, stream):
        theirs = _epoch_of(name)
        if name == durable or mine is None or theirs is None or theirs > mine:
            continue
        try:
            with map_nats_errors(f"delete consumer {name} of {stream}"):
                await js.delete_consumer(stream, name)
        except BusNotFound:
            continue
        dropped += 1
    return dropped


@dataclass(frozen=True)
class Usage:
    """A stream's occupancy, from one ``stream_info``."""

    stream: str
    budget: int  # max_bytes; -1: unlimited
    bytes: int
    messages: int
    first_seq: int
    last_seq: int

    @property
    def mean_message(self) -> float:
        return self.bytes / self.messages if self.messages else 0.0

    def unconsumed_bytes(self, consumed_seq: int) -> float:
        """Estimated: messages after ``consumed_seq`` at the mean message size."""
        return max(0, self.last_seq - max(consumed_seq, self.first_seq - 1)) * self.mean_message

    def replay_bytes(self, consumed_seq: int) -> float:
        return max(0.0, self.bytes - self.unconsumed_bytes(consumed_seq))


async def usage(js: JetStreamContext, stream: str) -> Usage:
    with map_nats_errors(f"stream info {stream}"):
        info = await js.stream_info(stream)
    state = info.state
    return Usage(
        stream,
        int(info.config.max_bytes or -1),
        int(state.bytes),
        int(state.messages),
        int(state.first_seq),
        int(state.last_seq),
    )


def keep_from(u: Usage, consumed_seq: int, window_seq: int, share: float = REPLAY_SHARE) -> int:
    """The first sequence to keep; everything below it may be purged.

    ``window_seq`` is the first consumed message inside the replay window (by
    time).  Never above ``consumed_seq + 1``: unconsumed messages stay.
    """
    keep = min(window_seq, consumed_seq + 1)
    if u.budget > 0 and u.mean_message > 0:
        allowed = max(0.0, share * u.budget - u.unconsumed_bytes(consumed_seq))
        keep = max(keep, consumed_seq + 1 - int(allowed // u.mean_message))
    return max(u.first_seq, min(keep, consumed_seq + 1))


async def message_time(js: JetStreamContext, stream: str, subject: str, seq: int) -> float | None:
    """When the first message at or after ``seq`` was stored (epoch s); None if none is."""
    try:
        with map_nats_errors(f"get message {seq} of {stream}"):
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except BusNotFound:
        return None
    when = msg.time
    return when.timestamp() if isinstance(when, dt.datetime) else None


async def window_start(
    js: JetStreamContext,
    u: Usage,
    subject: str,
    consumed_seq: int,
    cutoff: float,
    first_at: float | None,
) -> int:
    """The first sequence in ``[first_seq, consumed_seq + 1]`` stored at or after ``cutoff``.

    ``first_at`` is the store time of the stream's first message (None: empty).
    A binary search over store times (which rise with the sequence): about
    log2(messages) reads of one message each.
    """
    lo, hi = u.first_seq, consumed_seq + 1
    if lo >= hi:
        return lo
    if first_at is None or first_at >= cutoff:
        return lo  # the usual case: the whole stream is inside the window
    lo += 1
    while lo < hi:
        mid = (lo + hi) // 2
        when = await message_time(js, u.stream, subject, mid)
        if when is None or when >= cutoff:
            hi = mid
        else:
            lo = mid + 1
    return lo


async def purge_before(js: JetStreamContext, stream: str, seq: int) -> None:
    """Remove every message below ``seq`` (one atomic request)."""
    with map_nats_errors(f"purge {stream} below {seq}"):
        await js.purge_stream(stream, seq=seq)


async def ack_floor(js: JetStreamContext, stream: str) -> int | None:
    """The last sequence a loader acknowledged on ``stream``; None while it has no
    consumer.  The highest of every loader consumer's: a loader acknowledges only
    what its checkpoint committed, and no earlier owner committed past the
    current checkpoint, so each floor is at or below it."""
    floors = await loader_consumers(js, stream)
    return max(floors.values()) if floors else None


@dataclass(frozen=True)
class Retained:
    """One retention round of a stream: its occupancy after it, and what it purged."""

    usage: Usage
    purged: int  # messages removed by this round
    oldest_at: float | None  # store time of the oldest message kept; None: empty


async def retain(
    js: JetStreamContext,
    stream: str,
    subject: str,
    committed_seq: int,
    *,
    replay_window_s: float,
    now: float,
) -> Retained:
    """The loader's round: purge consumed messages outside the replay window, or
    beyond the replay share of the budget."""
    u = await usage(js, stream)
    oldest = await message_time(js, stream, subject, u.first_seq) if u.messages else None
    window = await window_start(js, u, subject, committed_seq, now - replay_window_s, oldest)
    keep = keep_from(u, committed_seq, window)
    purged = 0
    if keep > u.first_seq:
        await purge_before(js, stream, keep)
        before = u.messages
        u = await usage(js, stream)
        purged = max(0, before - u.messages)
        logger.info(
            "purged consumed events",
            extra={"stream": stream, "below_seq": keep, "messages": purged},
        )
        oldest = await message_time(js, stream, subject, u.first_seq) if u.messages else None
    return Retained(u, purged, oldest)


class RoomMaker:
    """A gateway's answer to a full stream: purge what the loader consumed, once
    at a time per stream, then let the refused write try again.

    A purge that frees nothing (the stream is full of unconsumed events) is not
    asked again for ``quiet_s``: the writes are refused meanwhile.
    """

    def __init__(self, js: JetStreamContext, *, quiet_s: float = 0.5) -> None:
        self._js = js
        self._quiet = quiet_s
        self._busy: dict[str, asyncio.Future[bool]] = {}
        self._futile_at: dict[str, float] = {}
        self._refusing: set[str] = set()  # streams refusing writes, logged once

    async def make_room(self, stream: str) -> bool:
        """Whether space was freed (so the write is worth trying again)."""
        running = self._busy.get(stream)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._busy[stream] = future
        freed = False
        try:
            freed = await self._purge(stream)
        finally:
            del self._busy[stream]
            future.set_result(freed)
        return freed

    async def _purge(self, stream: str) -> bool:
        if time.monotonic() - self._futile_at.get(stream, -1e9) < self._quiet:
            return False
        floor = await ack_floor(self._js, stream)
        u = await usage(self._js, stream)
        # The stream is full: the replay window gives way entirely.
        keep = u.first_seq if floor is None else keep_from(u, floor, floor + 1, share=0.0)
        if keep <= u.first_seq:
            self._futile_at[stream] = time.monotonic()
            if stream not in self._refusing:
                self._refusing.add(stream)
                logger.warning(
                    "stream full of events not yet in the lake: refusing writes until the "
                    "loader catches up",
                    extra={"stream": stream, "consumed_seq": floor, "last_seq": u.last_seq},
                )
            return False
        await purge_before(self._js, stream, keep)
        self._refusing.discard(stream)
        logger.info(
            "stream full: purged consumed events of the replay window",
            extra={
                "stream": stream,
                "below_seq": keep,
                "consumed_seq": floor,
                "last_seq": u.last_seq,
            },
        )
        return True
