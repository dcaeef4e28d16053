"""The reading side of the bus: a stream read in order, from a checkpoint, by one loader.

:class:`StreamReader` is one durable pull consumer with ack-all.  Where to start
is not the consumer's ack state but the reader's caller's checkpoint: every
:meth:`StreamReader.start` deletes the consumer and creates it again right after
the checkpoint, so nothing waits out an ack timeout after a restart.  What it
guarantees the caller:

* **Every message, in order, or an error.**  A gap in stream sequences (a
  slow-consumer disconnect drops what was on the wire; acknowledging a later
  message would acknowledge those too) raises :class:`SequenceGap` before the
  caller sees the batch.  Only messages that aged out of the stream
  (``max_age``) before being read are let go, with an error log.
* **Drained means drained.**  ``Batch.drained_as_of`` is when the bus was last
  known to hold nothing more, or None: an empty fetch alone does not say so (a
  process paused during the fetch wakes to its timeout with messages waiting),
  so the server is asked.
* **Acknowledging is advisory.**  The caller's checkpoint decides what is read
  again; a failed ack is logged, and a later one covers it.

Also here: waiting for streams the gateway creates, and reading the per-minute
tallies the gateway publishes (``Hg-Tally``) for ``hourglass audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hourglass import log
from hourglass.bus.errors import BusNotFound, BusUnavailable, map_nats_errors
from hourglass.bus.jetstream import KIND, TALLY, parse_tally
from hourglass.bus.marks import WATERMARK_KIND, Marker
from hourglass.exceptions import SequenceGap

logger = log.get("hourglass.bus")

# At most 32 messages of up to commit_max_bytes (1 MiB) per fetch: a server drops a
# client with more than its max_pending (64 MiB by default) in flight to it.
FETCH_BATCH = 32
FETCH_WAIT_S = 0.5
# A fetch returns what the server holds at once: a loader that keeps up gets one or
# two messages a fetch, and the loader's cost per call is mostly fixed (measured
# with ``bench/loader.py --per-message 530``: 15.7 µs/event a message per call,
# 6.0 four, 3.1 thirty-two).  So ``gather`` fetches on, for up to GATHER_S or
# GATHER_BYTES, before the caller processes: ~0.1 s more to the lake, a fraction
# of the CPU.
GATHER_S = 0.1
GATHER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BusMessage:
    seq: int
    data: bytes
    marker: tuple[str, int] | None = None  # (gateway, watermark µs) for a marker


def to_bus_message(seq: int, data: bytes, kind: str | None) -> BusMessage:
    if kind == WATERMARK_KIND:
        body = msgspec.json.decode(data, type=Marker)
        return BusMessage(seq, b"", (body.gateway, body.watermark))
    return BusMessage(seq, data)


@dataclass(frozen=True)
class Batch:
    messages: list[BusMessage]  # in stream order; empty if nothing came in time
    pending: int  # messages still on the bus after these (0 when none came)
    drained_as_of: float | None  # when the bus was known to hold nothing more; None: not


class StreamReader:
    """One stream, read in order by the durable consumer ``durable``."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str, durable: str) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self._sub: JetStreamContext.PullSubscription | None = None
        self._unacked: Msg | None = None

    async def start(self, after_seq: int) -> None:
        """(Re)create the consumer so that the next message read is ``after_seq + 1``."""
        self._unacked = None
        with contextlib.suppress(BusNotFound), map_nats_errors(f"delete consumer {self.stream}"):
            await self.js.delete_consumer(self.stream, self.durable)
        with map_nats_errors(f"create consumer {self.stream}"):
            self._sub = await self.js.pull_subscribe(
                self.subject,
                durable=self.durable,
                stream=self.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.ALL,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=after_seq + 1,
                    ack_wait=300,
                    max_deliver=-1,
                    max_ack_pending=100_000,
                ),
            )

    async def gather(self, expected_seq: int) -> Batch:
        """:meth:`fetch`, then more fetches for up to ``GATHER_S`` while the messages
        hold under ``GATHER_BYTES``: one batch, in order, for the caller to process
        at once.  The pending count and drain time are the last fetch's."""
        batch = await self.fetch(expected_seq)
        messages = list(batch.messages)
        size = sum(len(m.data) for m in messages)
        deadline = time.monotonic() + GATHER_S
        while messages and size < GATHER_BYTES:
            left = deadline - time.monotonic()
            if left < 0.005:
                break
            batch = await self.fetch(messages[-1].seq + 1, wait=left)
            # A redelivered message below the last one is already in the batch.
            more = [m for m in batch.messages if m.seq > messages[-1].seq]
            messages += more
            size += sum(len(m.data) for m in more)
            if not batch.messages:
                break
        return Batch(messages, batch.pending, batch.drained_as_of)

    async def fetch(self, expected_seq: int, wait: float = FETCH_WAIT_S) -> Batch:
        """The next messages; ``expected_seq`` is the first the caller has not processed.

        Messages below it (redelivered) are returned too: the caller skips them.
        """
        assert self._sub is not None, "start() first"
        asked = time.time()
        with map_nats_errors(f"fetch {self.stream}"):
            try:
                msgs = await self._sub.fetch(FETCH_BATCH, timeout=wait)
            except asyncio.TimeoutError:  # nats-py's own TimeoutError is one too
                msgs = []
        if not msgs:
            return Batch([], 0, await self._drained_now())
        await check_contiguous(self.js, self.stream, expected_seq, msgs)
        self._unacked = msgs[-1]
        pending = int(msgs[-1].metadata.num_pending)
        batch = [
            to_bus_message(int(m.metadata.sequence.stream), m.data, (m.headers or {}).get(KIND))
            for m in msgs
        ]
        return Batch(batch, pending, asked if pending == 0 else None)

    async def _drained_now(self) -> float | None:
        assert self._sub is not None
        asked = time.time()
        try:
            with map_nats_errors(f"consumer info {self.stream}"):
                info = await self._sub.consumer_info()
        except (BusUnavailable, BusNotFound):
            return None
        return asked if info.num_pending == 0 else None

    async def ack(self) -> None:
        """Acknowledge every message fetched so far (ack-all); a failure is only logged."""
        last, self._unacked = self._unacked, None
        if last is None:
            return
        try:
            with map_nats_errors(f"ack {self.stream}"):
                await last.ack_sync()
        except (BusUnavailable, BusNotFound) as exc:
            logger.warning(
                "ack failed; a later one covers it",
                extra={"stream": self.stream, "error": str(exc)},
            )


async def check_contiguous(
    js: JetStreamContext, stream: str, expected: int, msgs: list[Msg]
) -> None:
    """Raise :class:`SequenceGap` if ``msgs`` skip a sequence from ``expected`` on,
    unless the skipped messages are no longer in the stream (they aged out)."""
    for msg in msgs:
        seq = int(msg.metadata.sequence.stream)
        if seq > expected:
            with map_nats_errors(f"stream info {stream}"):
                first = int((await js.stream_info(stream)).state.first_seq)
            if seq > max(expected, first):
                raise SequenceGap(f"stream {stream}: got message {seq}, expected {expected}")
            logger.error(
                "messages expired from the bus before the loader read them",
                extra={"stream": stream, "from_seq": expected, "to_seq": seq - 1},
            )
        expected = max(expected, seq + 1)


async def wait_for_streams(js: JetStreamContext, names: list[str]) -> None:
    """Return once every stream in ``names`` exists (the gateway creates them)."""
    for name in names:
        while True:
            try:
                with map_nats_errors(f"stream info {name}"):
                    await js.stream_info(name)
                break
            except (BusNotFound, BusUnavailable):
                logger.info("waiting for stream (the gateway creates it)", extra={"stream": name})
                await asyncio.sleep(0.5)


async def tally_by_minute(
    js: JetStreamContext, stream: str, subject: str
) -> tuple[dict[int, int], int]:
    """Events per receive minute from a stream's ``Hg-Tally`` headers; and its first seq.

    Reads headers only, with an ephemeral consumer that acknowledges nothing.
    """
    with map_nats_errors(f"stream info {stream}"):
        info = await js.stream_info(stream)
    counts: dict[int, int] = {}
    if not info.state.messages:
        return counts, int(info.state.first_seq)
    with map_nats_errors(f"read tallies of {stream}"):
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(
                headers_only=True,
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=2)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    break
                for msg in msgs:
                    for minute, n in parse_tally((msg.headers or {}).get(TALLY)).items():
                        counts[minute] = counts.get(minute, 0) + n
                if msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    return counts, int(info.state.first_seq)


@dataclass
class Tallies:
    """What :func:`read_tallies` read: events per receive minute, and per message
    that carries any, ``(seq, events)`` in order; the next sequence to read."""

    minutes: dict[int, int]
    messages: list[tuple[int, int]]
    next_seq: int


async def read_tallies(
    js: JetStreamContext, stream: str, subject: str, start_seq: int, *, limit: int = 100_000
) -> Tallies:
    """The ``Hg-Tally`` headers of up to ``limit`` messages from ``start_seq`` on
    (or the stream's first, if those are gone): for the dashboard, which reads each
    message's headers once, in steps, instead of the whole stream each time as the
    audit does.  Headers only, an ephemeral consumer that acknowledges nothing."""
    out = Tallies({}, [], start_seq)
    with map_nats_errors(f"read tallies of {stream}"):
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(
                headers_only=True,
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(1, start_seq),
                inactive_threshold=30.0,
            ),
        )
        try:
            read = 0
            while read < limit:
                try:
                    msgs = await sub.fetch(min(1000, limit - read), timeout=1)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    break
                read += len(msgs)
                for msg in msgs:
                    tally = parse_tally((msg.headers or {}).get(TALLY))
                    if tally:
                        for minute, n in tally.items():
                            out.minutes[minute] = out.minutes.get(minute, 0) + n
                        out.messages.append((msg.metadata.sequence.stream, sum(tally.values())))
                out.next_seq = msgs[-1].metadata.sequence.stream + 1
                if msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    return out
