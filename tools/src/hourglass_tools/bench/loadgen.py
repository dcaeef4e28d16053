"""The load generator: keep-alive HTTP/1.1 over raw asyncio, open or closed loop.

* Open loop (``rate`` events/s): request slot ``i`` is due at
  ``start + i * interval``.  Each connection takes the next slot when it is
  free, sleeps until it is due (or sends at once if it is late) and measures
  the latency from the slot's *scheduled* time, so a slow answer shows up in
  the latency of every request queued behind it (no coordinated omission).
* Closed loop (``rate`` None, "find the maximum"): every connection sends its
  next request as soon as the previous one is answered; latency is from the
  actual send.

The same driver feeds any :class:`Channel`: the gateway or the bare HTTP
server (:class:`HttpChannel`) and raw JetStream publishing (``ceilings.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

import msgspec

from hourglass_tools.bench.hist import Histogram
from hourglass_tools.bench.workload import Workload, request_interval, scheduled_at


class Channel(Protocol):
    async def send(self, body: bytes) -> tuple[int, int]:
        """Send one batch; (status, events accepted).  Raises OSError if the
        link broke (the driver reconnects)."""
        ...

    async def close(self) -> None: ...


ChannelFactory = Callable[[], Awaitable[Channel]]


class _Answer(msgspec.Struct):
    accepted: int = 0


_decode_answer = msgspec.json.Decoder(_Answer).decode


class _HttpProtocol(asyncio.Protocol):
    """Parses responses with a Content-Length (what uvicorn sends)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._parse()

    def _parse(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(OSError("response without content-length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or OSError("connection closed by the server"))


class HttpChannel:
    """One keep-alive connection posting CloudEvents batches."""

    def __init__(self, proto: _HttpProtocol, head: bytes) -> None:
        self._proto = proto
        self._head = head

    @classmethod
    async def open(cls, host: str, port: int, path: str = "/v1/events") -> HttpChannel:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_HttpProtocol, host, port)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
            "content-type: application/cloudevents-batch+json\r\ncontent-length: "
        ).encode()
        return cls(proto, head)

    async def send(self, body: bytes) -> tuple[int, int]:
        proto = self._proto
        if proto.lost is not None or proto.transport is None:
            raise OSError("connection lost")
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        proto.waiter = waiter
        proto.transport.writelines([self._head, b"%d\r\n\r\n" % len(body), body])
        status, answer = await waiter
        if status != 200:
            return status, 0
        try:
            return status, _decode_answer(answer).accepted
        except msgspec.DecodeError:
            return 599, 0

    async def close(self) -> None:
        if self._proto.transport is not None:
            self._proto.transport.close()


def http_factory(host: str, port: int) -> ChannelFactory:
    async def make() -> Channel:
        return await HttpChannel.open(host, port)

    return make


@dataclass
class Plan:
    duration_s: float
    rate_eps: float | None = None  # None: closed loop
    warmup_s: float = 0.0
    connections: int = 4
    drain_s: float = 30.0  # how long answers still in flight at the end are awaited


@dataclass
class Second:
    """What was answered during one second of the measured window."""

    acked: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)


@dataclass
class LoadResult:
    plan: Plan
    measured_s: float = 0.0
    requests: int = 0
    acked_events: int = 0  # of requests due (sent) in the window, resends included
    errors: dict[str, int] = field(default_factory=dict)  # status or exception → count
    latency: Histogram = field(default_factory=Histogram)  # µs, the window's 200s
    seconds: list[Second] = field(default_factory=list)  # by the second they were answered
    acked_by_request: dict[int, int] = field(default_factory=dict)  # every 200, whole run
    sent_requests: int = 0  # whole run, resends included
    accepted_total: int = 0  # events in every 200 of the whole run, resends included
    resends: int = 0
    late_slots: int = 0  # open loop: sent > 10 ms after due (every connection was busy)
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock start and end of the window
    lagging: bool = False  # open loop: acknowledged < 95 % of the rate asked for

    @property
    def events_per_s(self) -> float:
        return self.acked_events / self.measured_s if self.measured_s else 0.0

    @property
    def unique_acked_events(self) -> int:
        return sum(self.acked_by_request.values())


class _Run:
    """One :func:`drive` call: the schedule, the connections, the tallies."""

    def __init__(
        self,
        workload: Workload,
        plan: Plan,
        parts: list[bytes],
        first_request: int,
        on_ack: Callable[[int], None] | None,
    ) -> None:
        self.on_ack = on_ack
        self.loop = asyncio.get_running_loop()
        self.plan, self.parts = plan, parts
        self.result = LoadResult(plan)
        self.slots = itertools.count()
        self.numbers = itertools.count(first_request)
        self.every = workload.resend_every
        self.build = workload.build
        rate, n = plan.rate_eps, workload.events_per_request
        self.interval = request_interval(rate, n) if rate else 0.0
        self.mono0 = self.loop.time() + 0.05
        self.wall0 = time.time() + (self.mono0 - self.loop.time())
        self.begin = self.mono0 + plan.warmup_s
        self.end = self.begin + plan.duration_s
        self.result.window = (
            self.wall0 + plan.warmup_s,
            self.wall0 + plan.warmup_s + plan.duration_s,
        )
        self.last_done = self.begin

    def record(
        self, status: int | str, accepted: int, due: float, done: float, number: int
    ) -> None:
        result = self.result
        if status == 200:
            previous = result.acked_by_request.get(number, 0)
            result.acked_by_request[number] = max(previous, accepted)
            result.accepted_total += accepted
            if self.on_ack is not None:
                self.on_ack(accepted)
        if not self.begin <= due < self.end:  # a request belongs to the window it was due in
            return
        self.last_done = max(self.last_done, done)
        index = int(done - self.begin)
        while len(result.seconds) <= index:
            result.seconds.append(Second())
        second = result.seconds[index]
        if status == 200:
            micros = int((done - due) * 1e6)
            result.latency.record(micros)
            second.latency.record(micros)
            result.acked_events += accepted
            second.acked += accepted
        else:
            result.errors[str(status)] = result.errors.get(str(status), 0) + 1
            second.errors += 1

    async def due_time(self) -> float | None:
        """When the next request is due (after waiting for it); None: the run is over."""
        slot = next(self.slots)
        if not self.interval:
            now = self.loop.time()
            return now if now < self.end else None
        due = scheduled_at(self.mono0, slot, self.interval)
        if due >= self.end:
            return None
        wait = due - self.loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.01 and due >= self.begin:
            self.result.late_slots += 1
        return due

    async def connection(self, factory: ChannelFactory) -> None:
        channel = await factory()
        last: tuple[int, bytes] | None = None
        sent = 0
        try:
            while (due := await self.due_time()) is not None:
                sent += 1
                if self.every and last is not None and sent % self.every == 0:
                    number, body = last  # a resend: the same events, byte for byte
                    self.result.resends += 1
                else:
                    number = next(self.numbers)
                    sent_us = int((self.wall0 + due - self.mono0) * 1e6)
                    body = self.build(self.parts, number, sent_us)
                    last = (number, body)
                if not self.interval:
                    due = self.loop.time()
                self.result.sent_requests += 1
                try:
                    status, accepted = await channel.send(body)
                except OSError as exc:
                    self.record(type(exc).__name__, 0, due, self.loop.time(), number)
                    await channel.close()
                    await asyncio.sleep(0.05)
                    channel = await factory()
                    continue
                self.record(status, accepted, due, self.loop.time(), number)
        finally:
            await channel.close()

    def finish(self) -> LoadResult:
        result, plan = self.result, self.plan
        result.requests = sum(s.latency.total + s.errors for s in result.seconds)
        # Open loop, overloaded: the window's requests took longer than the window.
        result.measured_s = max(plan.duration_s, self.last_done - self.begin)
        if plan.rate_eps:
            result.lagging = result.events_per_s < 0.95 * plan.rate_eps
        return result


async def drive(
    factory: ChannelFactory,
    workload: Workload,
    plan: Plan,
    *,
    parts: list[bytes],
    first_request: int = 0,
    on_ack: Callable[[int], None] | None = None,
) -> LoadResult:
    """Run ``plan`` against channels from ``factory``; requests are numbered from
    ``first_request`` so that several runs on one pipeline never reuse an id.
    ``on_ack`` hears the events of every 200 as it arrives."""
    run = _Run(workload, plan, parts, first_request, on_ack)
    tasks = [asyncio.create_task(run.connection(factory)) for _ in range(plan.connections)]
    limit = plan.warmup_s + plan.duration_s + plan.drain_s
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc
    return run.finish()
