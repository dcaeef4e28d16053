"""The loader's stop: a lost cancellation is sent again; a lake write in its thread ends first."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from hourglass.loader import service
from hourglass.loader.service import _stop_all, _whole


async def _deaf_once(stopped: list[str]) -> None:
    """Swallows the first cancellation, as a ``wait_for`` racing a result does in 3.11."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        pass
    try:
        await asyncio.sleep(60)  # back in the loop, retrying a bus that is gone
    finally:
        stopped.append("deaf")


async def test_a_lost_cancellation_is_sent_again() -> None:
    stopped: list[str] = []
    tasks = [asyncio.create_task(_deaf_once(stopped)), asyncio.create_task(asyncio.sleep(60))]
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await asyncio.wait_for(_stop_all(tasks), 5.0) is True
    assert stopped == ["deaf"]
    assert all(t.done() for t in tasks)
    assert time.monotonic() - started < 3.0


async def test_a_stream_that_never_stops_is_given_up_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop deaf to every cancellation (nats-py retrying a bus that is gone):
    ``_stop_all`` says so once the deadline passed, and the loader exits."""
    monkeypatch.setattr(service, "STOP_DEADLINE_S", 1.5)

    done = asyncio.Event()

    async def deaf() -> None:
        while not done.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(done.wait(), 60)

    tasks = [asyncio.create_task(deaf()), asyncio.create_task(asyncio.sleep(60))]
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await _stop_all(tasks) is False
    assert 1.5 <= time.monotonic() - started < 4.0
    assert tasks[1].done() and not tasks[0].done()
    done.set()  # the process would exit here; the test ends the task itself
    await tasks[0]


async def test_a_cancelled_lake_write_ends_before_the_cancellation_is_raised() -> None:
    """The stop-time flush must not run beside a write still going on in its thread."""
    release, log = threading.Event(), []

    def write() -> str:
        release.wait(5)
        log.append("write done")
        return "ok"

    task = asyncio.create_task(_whole(write))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done(), "the cancellation came back while the write still ran"
    task.cancel()  # twice, as _stop_all does
    await asyncio.sleep(0.1)
    assert not task.done()
    release.set()
    try:
        await task
    except asyncio.CancelledError:
        log.append("cancelled")
    assert log == ["write done", "cancelled"]


async def test_an_uncancelled_lake_write_returns_its_result() -> None:
    assert await _whole(lambda: 42) == 42
