"""The producer-sequence table against a model of the SDK's protocol (Hypothesis).

The model plays producers that spool events (sealing the floor they know),
send batches that land whole, in part (a 503 after some were durable) or not
at all, have events rejected, and whose slow requests land again much later.
The table must keep exactly the first copy of every event, whatever the bus
order and however the stream is cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.loader.producers import ProducerTable

T0 = 1_700_000_000.0


@dataclass
class Session:
    name: str
    floors: list[int] = field(default_factory=list)  # sealed at spool time, by seq
    acked: int = -1  # every seq up to here was answered
    sent: int = 0  # seqs below were answered (the batch in flight starts here)


def play(data: st.DataObject, producers: int, steps: int) -> list[tuple[str, int, int]]:
    """The stream one loader sees: ``(producer, seq, floor)`` in bus order."""
    sessions = [Session(f"p{i}") for i in range(producers)]
    stream: list[tuple[str, int, int]] = []
    landed: list[tuple[str, int, int]] = []  # copies a slow request may deliver again
    for _ in range(steps):
        s = data.draw(st.sampled_from(sessions))
        action = data.draw(st.sampled_from(["spool", "send", "send", "ghost"]))
        if action == "spool":
            s.floors.extend([s.acked] * data.draw(st.integers(1, 5)))
            continue
        if action == "ghost":
            if landed:
                stream.append(data.draw(st.sampled_from(landed)))
            continue
        batch = range(s.sent, min(len(s.floors), s.sent + data.draw(st.integers(1, 6))))
        if not batch:
            continue
        rejected = {q for q in batch if data.draw(st.integers(0, 9)) == 0}
        accepted = [(s.name, q, s.floors[q]) for q in batch if q not in rejected]
        outcome = data.draw(st.sampled_from(["done", "partial", "lost"]))
        if outcome == "lost":
            continue
        durable = accepted if outcome == "done" else data.draw(st.permutations(accepted))
        if outcome == "partial":
            durable = durable[: data.draw(st.integers(0, len(durable)))]
        stream.extend(durable)
        landed.extend(durable)
        if outcome == "done":
            s.sent, s.acked = batch[-1] + 1, batch[-1]  # answered through the batch's end
    return stream


def first_copies(stream: list[tuple[str, int, int]]) -> np.ndarray:
    seen: set[tuple[str, int]] = set()
    keep = []
    for name, seq, _ in stream:
        keep.append((name, seq) not in seen)
        seen.add((name, seq))
    return np.array(keep, dtype=bool)


def run(table: ProducerTable, stream: list[tuple[str, int, int]], cuts: list[int]) -> np.ndarray:
    keep = np.zeros(len(stream), dtype=bool)
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in zip(edges, edges[1:], strict=False):
        part = stream[a:b]
        keep[a:b] = table.fresh(
            pa.array([p for p, _, _ in part]),
            np.array([q for _, q, _ in part], dtype=np.int64),
            np.array([f for _, _, f in part], dtype=np.int64),
            T0,
        )
    return keep


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(1, 3), st.integers(1, 80), st.lists(st.integers(0, 400)))
def test_keeps_exactly_the_first_copy(
    data: st.DataObject, producers: int, steps: int, cuts: list[int]
) -> None:
    stream = play(data, producers, steps)
    table = ProducerTable(window_s=3600)
    assert (run(table, stream, cuts) == first_copies(stream)).all()
    assert table.evicted == 0
    # A saved table answers as the one in memory.
    again = ProducerTable(window_s=3600)
    again.load(table.encode())
    assert again.producers == table.producers


@settings(max_examples=120, deadline=None)
@given(st.data(), st.integers(1, 4), st.integers(1, 80), st.lists(st.integers(0, 400)))
def test_bounds_let_duplicates_through_never_drop(
    data: st.DataObject, producers: int, steps: int, cuts: list[int]
) -> None:
    stream = play(data, producers, steps)
    table = ProducerTable(window_s=3600, max_producers=1, max_ranges=1)
    keep = run(table, stream, cuts)
    assert (keep >= first_copies(stream)).all()  # every first copy kept
    assert len(table) <= 1
    assert all(len(p.lo) <= 1 for p in table.producers.values())


@settings(max_examples=100, deadline=None)
@given(st.data(), st.integers(1, 4), st.integers(1, 80), st.lists(st.integers(0, 400)))
def test_a_total_range_bound_holds_and_never_drops(
    data: st.DataObject, producers: int, steps: int, cuts: list[int]
) -> None:
    stream = play(data, producers, steps)
    table = ProducerTable(window_s=3600, max_ranges_total=3)
    keep = run(table, stream, cuts)
    assert (keep >= first_copies(stream)).all()
    assert table.ranges == sum(len(p.lo) for p in table.producers.values()) <= 3


def test_state_is_per_producer_not_per_event() -> None:
    """An SDK's steady traffic: one batch in flight, the floor a batch behind."""
    table = ProducerTable(window_s=3600)
    for batch in range(1000):
        seqs = np.arange(batch * 100, batch * 100 + 100, dtype=np.int64)
        floors = np.full(100, batch * 100 - 101, dtype=np.int64)
        assert table.fresh(pa.array(["p"] * 100), seqs, floors, T0).all()
    assert len(table.producers["p"].lo) == 1
    assert len(table.encode()) < 64
    # A batch sent again long after: gone below the floor, still recognised.
    again = table.fresh(pa.array(["p"] * 100), np.arange(100, dtype=np.int64), np.zeros(100), T0)
    assert not again.any()


def test_producers_unseen_for_the_window_leave() -> None:
    table = ProducerTable(window_s=60)
    one = np.zeros(1, dtype=np.int64)
    table.fresh(pa.array(["old"]), one, one - 1, T0)
    table.fresh(pa.array(["new"]), one, one - 1, T0 + 61)
    assert set(table.producers) == {"new"}
    assert table.evicted == 0


def test_over_a_bound_the_least_recently_seen_leave_down_to_nine_tenths() -> None:
    table = ProducerTable(window_s=3600, max_producers=10)
    one = np.ones(1, dtype=np.int64)
    for i in range(10):
        table.fresh(pa.array([f"p{i}"]), one, one - 1, T0 + i)
    assert len(table) == 10 and table.evicted == 0
    table.fresh(pa.array(["p10"]), one, one - 1, T0 + 10)
    assert sorted(table.producers) == sorted(f"p{i}" for i in range(2, 11))
    assert table.evicted == 2 and table.ranges == 9
