"""The audit waits out a bus that answers "unavailable" for a while (a cluster
electing a stream leader) and gives up with that error after ``wait_s``.

``tally_by_minute`` is replaced: what is tested is the retry around it, pure logic.
"""

from __future__ import annotations

from typing import Any

import pytest

from hourglass import audit
from hourglass.exceptions import BusUnavailable


def _flaky(failures: int, calls: list[str]) -> Any:
    async def tally(js: object, stream: str, subject: str) -> tuple[dict[int, int], int]:
        calls.append(stream)
        if len(calls) <= failures:
            raise BusUnavailable(f"read tallies of {stream}: JetStream unavailable")
        return {29_000_000: 7}, 1

    return tally


async def test_a_read_refused_twice_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(audit, "tally_by_minute", _flaky(2, calls))
    got = await audit.published_by_minute(None, "music.SongSkipped", 3, wait_s=10)  # type: ignore[arg-type]
    assert got == ({29_000_000: 7}, 1)
    assert calls == ["HG_music_SongSkipped-3"] * 3


async def test_a_bus_unavailable_for_longer_than_the_wait_fails_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(audit, "tally_by_minute", _flaky(1000, calls))
    with pytest.raises(BusUnavailable, match="JetStream unavailable"):
        await audit.published_by_minute(None, "music.SongSkipped", wait_s=0.5)  # type: ignore[arg-type]
    assert 2 <= len(calls) <= 3  # 0.25 s, then 0.5 s would pass the deadline
