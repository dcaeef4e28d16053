"""uuid7: RFC 9562 version and variant, and ids that only go up within a process."""

from __future__ import annotations

import threading
import time
import types
import uuid

import pytest

from hourglass.producer import ids
from hourglass.producer.ids import uuid7


def _ms(value: uuid.UUID) -> int:
    return value.int >> 80


def test_version_and_variant() -> None:
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value


def test_timestamp_is_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= _ms(value) <= after + 1


def test_monotonic_across_many_calls() -> None:
    values = [uuid7() for _ in range(50_000)]  # thousands in each millisecond
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert sorted(str(v) for v in values) == [str(v) for v in values]  # text sorts too


def test_monotonic_across_threads() -> None:
    per_thread: dict[int, list[uuid.UUID]] = {}

    def work(t: int) -> None:
        per_thread[t] = [uuid7() for _ in range(5_000)]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [v for values in per_thread.values() for v in values]
    assert len(set(every)) == len(every)
    for values in per_thread.values():
        assert all(a < b for a, b in zip(values, values[1:], strict=False))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A clock the test sets (in ns); state reset so earlier calls do not leak in."""
    now = [1_700_000_000_000 * 1_000_000]
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time_ns=lambda: now[0]))
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_counter", 0)
    return now


def test_frozen_clock_still_ordered(clock: list[int]) -> None:
    """More than 4096 ids in one millisecond borrow the next one rather than wrap."""
    values = [uuid7() for _ in range(10_000)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in values)
    assert _ms(values[0]) == clock[0] // 1_000_000


def test_clock_going_backwards_still_ordered(clock: list[int]) -> None:
    first = [uuid7() for _ in range(100)]
    clock[0] -= 5_000 * 1_000_000  # NTP stepped the clock back 5 s
    later = [uuid7() for _ in range(100)]
    values = first + later
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
