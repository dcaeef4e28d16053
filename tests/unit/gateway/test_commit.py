"""Group commit logic, against an in-memory publisher (pure logic, no bus)."""

from __future__ import annotations

import asyncio

import pytest

from hourglass.exceptions import BusUnavailable
from hourglass.gateway.commit import GroupCommitter, split_lines


class FakePublisher:
    def __init__(self, delay: float = 0.01, fail: bool = False) -> None:
        self.messages: list[tuple[str, bytes, str]] = []
        self.tallies: list[str | None] = []
        self.delay = delay
        self.fail = fail

    async def publish(
        self, subject: str, payload: bytes, msg_id: str, tally: str | None = None
    ) -> int:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise BusUnavailable("down")
        self.messages.append((subject, payload, msg_id))
        self.tallies.append(tally)
        return len(self.messages)


async def test_concurrent_commits_share_bus_messages() -> None:
    pub = FakePublisher()
    committer = GroupCommitter(pub, owner="gw", max_bytes=1 << 20, max_wait=0.005)
    await asyncio.gather(*(committer.commit("s", b"x%d\n" % i, 1) for i in range(100)))
    lines = b"".join(p for _, p, _ in pub.messages).splitlines()
    assert sorted(lines) == sorted(b"x%d" % i for i in range(100))
    assert len(pub.messages) < 10
    assert len({m for _, _, m in pub.messages}) == len(pub.messages), "msg ids must be unique"


async def test_lone_commit_is_published_without_waiting() -> None:
    pub = FakePublisher(delay=0)
    committer = GroupCommitter(pub, owner="gw", max_bytes=1 << 20, max_wait=5.0)
    await asyncio.wait_for(committer.commit("s", b"a\n", 1), timeout=1.0)


async def test_subjects_are_never_mixed() -> None:
    pub = FakePublisher()
    committer = GroupCommitter(pub, owner="gw", max_bytes=1 << 20, max_wait=0.005)
    await asyncio.gather(*(committer.commit(f"s{i % 3}", b"%d\n" % (i % 3), 1) for i in range(60)))
    for subject, payload, _ in pub.messages:
        assert set(payload.splitlines()) == {subject[1:].encode()}


async def test_max_bytes_bounds_each_message() -> None:
    pub = FakePublisher()
    committer = GroupCommitter(pub, owner="gw", max_bytes=100, max_wait=0.005)
    await asyncio.gather(*(committer.commit("s", b"y" * 29 + b"\n", 1) for _ in range(50)))
    assert all(len(p) <= 100 for _, p, _ in pub.messages)
    assert sum(len(p) for _, p, _ in pub.messages) == 50 * 30


async def test_failure_reaches_every_waiter() -> None:
    committer = GroupCommitter(
        FakePublisher(fail=True), owner="gw", max_bytes=1 << 20, max_wait=0.005
    )
    results = await asyncio.gather(
        *(committer.commit("s", b"z\n", 1) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, BusUnavailable) for r in results)


async def test_close_flushes_pending() -> None:
    pub = FakePublisher()
    committer = GroupCommitter(pub, owner="gw", max_bytes=1 << 20, max_wait=10.0)
    task = asyncio.gather(*(committer.commit("s", b"w\n", 1) for _ in range(5)))
    await asyncio.sleep(0)
    await committer.close()
    await task
    assert b"".join(p for _, p, _ in pub.messages).count(b"\n") == 5


@pytest.mark.parametrize("max_bytes", [1, 5, 7, 64, 1000])
def test_split_lines_keeps_every_line_whole(max_bytes: int) -> None:
    lines = [b"a" * n + b"\n" for n in (1, 4, 6, 2, 0, 9)]
    chunk = b"".join(lines)
    pieces = split_lines(chunk, len(lines), max_bytes)
    assert b"".join(p for p, _ in pieces) == chunk
    assert sum(n for _, n in pieces) == len(lines)
    for piece, n in pieces:
        assert piece.endswith(b"\n") and piece.count(b"\n") == n
        assert len(piece) <= max_bytes or n == 1


async def test_tally_counts_events_per_minute_in_each_message() -> None:
    pub = FakePublisher()
    committer = GroupCommitter(pub, owner="gw", max_bytes=1 << 20, max_wait=0.005)
    await asyncio.gather(
        committer.commit("s", b"a\nb\n", 2, 100),
        committer.commit("s", b"c\n", 1, 101),
        committer.commit("s", b"d\n", 1, 100),
    )
    totals: dict[int, int] = {}
    for tally in pub.tallies:
        assert tally is not None
        for part in tally.split(","):
            minute, n = part.split(":")
            totals[int(minute)] = totals.get(int(minute), 0) + int(n)
    assert totals == {100: 3, 101: 1}
