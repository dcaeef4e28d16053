"""The loader's read of a stream against a real nats-server: a batch gathers what
arrives within GATHER_S, in order, each message once."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from hourglass.bus.consumer import GATHER_S, StreamReader
from tests.integration.support import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_batch_gathers_messages_published_while_it_waits(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="G", subjects=["g.>"])
        for i in range(3):
            await js.publish("g.x", b"m%d" % i)
        reader = StreamReader(js, "G", "g.>", "gatherer")
        await reader.start(0)

        async def trickle() -> None:  # one message every 5 ms, as a steady producer
            for i in range(3, 8):
                await asyncio.sleep(0.005)
                await js.publish("g.x", b"m%d" % i)

        started = time.monotonic()
        task = asyncio.create_task(trickle())
        batch = await reader.gather(1)
        took = time.monotonic() - started
        await task
        first = [m.seq for m in batch.messages]
        assert first == list(range(1, len(first) + 1)), first  # in order, each once
        assert len(first) > 3, "only what the first fetch found"
        assert took < GATHER_S + 0.6, took
        rest = await reader.gather(len(first) + 1)
        seqs = first + [m.seq for m in rest.messages]
        assert seqs == list(range(1, 9))
        assert [m.data for m in [*batch.messages, *rest.messages]] == [b"m%d" % i for i in range(8)]
        await reader.ack()
        again = await reader.gather(9)  # nothing more: an empty batch, drained
        assert again.messages == [] and again.drained_as_of is not None
    finally:
        await nc.close()
