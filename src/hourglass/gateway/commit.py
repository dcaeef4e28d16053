"""Group commit: many requests' events, one durable bus message per subject.

A request hands in one NDJSON *chunk* per event type and waits.  Chunks for the
same subject are concatenated into one bus message, published with a unique
``Nats-Msg-Id``, and every waiting request is released only after JetStream's
publish acknowledgement (fsync'd on the embedded bus, replicated on a
cluster).  If the publish fails, every request in the group gets the error and
answers 503: nothing in it was acknowledged.

When to publish: at once if nothing is in flight for the subject (so a lone
request pays no added latency), otherwise after at most ``max_wait`` seconds, or
as soon as ``max_bytes`` have gathered.  Under load this turns thousands of
requests per second into a few hundred fsync'd bus messages.

No state here outlives the process: a crash loses only requests that were never
answered, which their clients retry.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Protocol

from hourglass.bus.jetstream import format_tally
from hourglass.exceptions import BusUnavailable


class Publisher(Protocol):
    async def publish(
        self, subject: str, payload: bytes, msg_id: str, tally: str | None = None
    ) -> int:
        """Store ``payload`` durably; return its stream sequence or raise BusUnavailable.

        ``tally`` (``<minute>:<events>,...``) travels as the ``Hg-Tally`` header:
        how many events of each receive minute the message holds, for the audit.
        """
        ...


PublishObserver = Callable[[str, int, int, float], None]  # subject, events, bytes, seconds


class _Lane:
    __slots__ = ("chunks", "counts", "minutes", "nbytes", "waiters", "timer", "inflight")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.counts = 0
        self.minutes: dict[int, int] = {}
        self.nbytes = 0
        self.waiters: list[asyncio.Future[int]] = []
        self.timer: asyncio.Handle | None = None
        self.inflight = 0


class GroupCommitter:
    def __init__(
        self,
        publisher: Publisher,
        *,
        owner: str,
        max_bytes: int,
        max_wait: float,
        observe: PublishObserver | None = None,
    ) -> None:
        self._publisher = publisher
        self._owner = owner
        self._max_bytes = max_bytes
        self._max_wait = max_wait
        self._observe = observe
        self._lanes: dict[str, _Lane] = {}
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def commit(
        self, subject: str, chunk: bytes, count: int, minute: int | None = None
    ) -> None:
        """Return once ``chunk`` (NDJSON lines, ``count`` events) is durable.

        ``minute`` (receive time, minutes since the epoch) is tallied in the bus
        message's header when given.
        """
        waits = [
            self._submit(subject, piece, n, minute)
            for piece, n in split_lines(chunk, count, self._max_bytes)
        ]
        await asyncio.gather(*waits)

    def _submit(
        self, subject: str, chunk: bytes, count: int, minute: int | None
    ) -> asyncio.Future[int]:
        lane = self._lanes.get(subject)
        if lane is None:
            lane = self._lanes[subject] = _Lane()
        if lane.chunks and lane.nbytes + len(chunk) > self._max_bytes:
            self._flush(subject, lane)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        lane.chunks.append(chunk)
        lane.counts += count
        if minute is not None:
            lane.minutes[minute] = lane.minutes.get(minute, 0) + count
        lane.nbytes += len(chunk)
        lane.waiters.append(future)
        if lane.nbytes >= self._max_bytes:
            self._flush(subject, lane)
        elif lane.timer is None:
            loop = asyncio.get_running_loop()
            if lane.inflight == 0:
                lane.timer = loop.call_soon(self._flush, subject, lane)
            else:
                lane.timer = loop.call_later(self._max_wait, self._flush, subject, lane)
        return future

    def _flush(self, subject: str, lane: _Lane) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if not lane.chunks:
            return
        payload = b"".join(lane.chunks)
        count, waiters = lane.counts, lane.waiters
        tally = format_tally(lane.minutes)
        lane.chunks, lane.counts, lane.nbytes, lane.waiters = [], 0, 0, []
        lane.minutes = {}
        lane.inflight += 1
        task = asyncio.create_task(self._publish(subject, lane, payload, count, tally, waiters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(
        self,
        subject: str,
        lane: _Lane,
        payload: bytes,
        count: int,
        tally: str | None,
        waiters: list[asyncio.Future[int]],
    ) -> None:
        msg_id = f"{self._owner}-{next(self._seq)}"
        started = time.perf_counter()
        try:
            seq = await self._publisher.publish(subject, payload, msg_id, tally)
        except BusUnavailable as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must still release the waiters
            error = BusUnavailable(f"publish failed unexpectedly: {exc!r}")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        else:
            if self._observe is not None:
                self._observe(subject, count, len(payload), time.perf_counter() - started)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(seq)
        finally:
            lane.inflight -= 1

    async def close(self) -> None:
        """Publish what is pending and wait for every publish in flight."""
        for subject, lane in list(self._lanes.items()):
            self._flush(subject, lane)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def split_lines(chunk: bytes, count: int, max_bytes: int) -> list[tuple[bytes, int]]:
    """Split NDJSON at line ends into pieces of at most ``max_bytes``.

    A piece can only exceed ``max_bytes`` if a single line does, which the
    gateway's ``max_event_bytes`` limit rules out.
    """
    if len(chunk) <= max_bytes:
        return [(chunk, count)]
    pieces: list[tuple[bytes, int]] = []
    start = 0
    while start < len(chunk):
        end = start + max_bytes
        if end < len(chunk):
            cut = chunk.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else chunk.index(b"\n", end) + 1
        piece = chunk[start:end]
        pieces.append((piece, piece.count(b"\n")))
        start = end
    return pieces
