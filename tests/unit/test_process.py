"""``RunLock``: a live supervisor is refused, the remains of a killed run are waited for."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hourglass.exceptions import ConfigError
from hourglass.process import RunLock


@pytest.fixture
def straggler(tmp_path: Path) -> Iterator[None]:
    """``run.lock`` held as a child of a killed run holds it (another open file)."""
    fd = os.open(tmp_path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


async def test_a_second_supervisor_is_refused(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    await first.acquire(1.0)
    try:
        with pytest.raises(ConfigError, match=rf"in use by .*\(pid {os.getpid()}\)"):
            await RunLock(tmp_path).acquire(1.0)
    finally:
        first.release()
    again = RunLock(tmp_path)
    await again.acquire(1.0)
    again.release()


@pytest.mark.usefixtures("straggler")
async def test_waits_for_a_straggler_then_gives_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock = RunLock(tmp_path)
    with pytest.raises(ConfigError, match=r"still run after 0.2s .*fuser -v"):
        await lock.acquire(0.2)
    assert "waiting for them to exit" in caplog.text
    # Giving up released up.lock: the next supervisor is not refused as a live one.
    with pytest.raises(ConfigError, match="still run"):
        await RunLock(tmp_path).acquire(0.1)


async def test_starts_once_the_straggler_is_gone(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a straggler, gone in 0.2 s
    lock = RunLock(tmp_path)
    waiting = asyncio.create_task(lock.acquire(5.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    os.close(fd)
    await asyncio.wait_for(waiting, 2.0)
    assert os.get_inheritable(lock.fd) is False  # children get it through pass_fds only
    lock.release()
