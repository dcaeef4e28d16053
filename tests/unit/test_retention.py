"""The retention rule alone (bus/retention.py): what may leave a stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hourglass.bus.retention import Usage, keep_from

MIB = 1 << 20


def usage(*, budget: int, first: int, last: int, mean: int = 1000) -> Usage:
    n = last - first + 1
    return Usage("HG_x", budget, n * mean, n, first, last)


def test_outside_the_window_and_consumed_goes() -> None:
    u = usage(budget=100 * MIB, first=1, last=100)
    assert keep_from(u, consumed_seq=80, window_seq=50) == 50


def test_unconsumed_never_goes_whatever_the_window_says() -> None:
    u = usage(budget=100 * MIB, first=1, last=100)
    assert keep_from(u, consumed_seq=30, window_seq=90) == 31


def test_a_short_budget_shrinks_the_window_before_anything_is_refused() -> None:
    # 100 messages of 1000 B in a 100 kB budget: half of it (50 kB) is the share,
    # 20 unconsumed messages take 20 kB of it, so 30 consumed ones may stay.
    u = usage(budget=100_000, first=1, last=100)
    assert keep_from(u, consumed_seq=80, window_seq=1) == 51
    # Unconsumed events over the share: no replay at all.
    assert keep_from(u, consumed_seq=40, window_seq=1) == 41
    # A full stream (the gateway's case): everything consumed goes.
    assert keep_from(u, consumed_seq=80, window_seq=81, share=0.0) == 81


def test_an_unlimited_stream_keeps_the_window_only() -> None:
    u = usage(budget=-1, first=1, last=100)
    assert keep_from(u, consumed_seq=100, window_seq=1) == 1


def test_estimates_split_the_stream_at_the_consumed_sequence() -> None:
    u = usage(budget=MIB, first=11, last=60)
    assert u.unconsumed_bytes(40) == 20 * 1000
    assert u.replay_bytes(40) == 30 * 1000
    assert u.unconsumed_bytes(5) == u.bytes, "nothing of the stream is consumed"
    assert u.unconsumed_bytes(60) == 0


@given(
    first=st.integers(1, 1000),
    length=st.integers(0, 1000),
    consumed_at=st.floats(0, 1),
    window_at=st.floats(0, 1.2),
    budget=st.integers(-1, 2_000_000),
    share=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
)
def test_never_past_the_consumed_and_never_before_the_first(
    first: int, length: int, consumed_at: float, window_at: float, budget: int, share: float
) -> None:
    last = first + length - 1
    consumed = first - 1 + int(length * consumed_at)
    window = first + int(length * window_at)
    u = usage(budget=budget, first=first, last=last)
    keep = keep_from(u, consumed, window, share)
    assert first <= keep <= max(first, consumed + 1)
