"""A standby keeps its dedup index warm from the lake; taking over reads only new files."""

from __future__ import annotations

import pytest

from hourglass.loader.owner import Unclaimed
from tests.unit.loader.conftest import H0, Harness, key, skipped

MIN = 60


def test_a_warm_standby_reads_each_file_once_and_its_index_dedups_after_takeover(
    harness: Harness,
) -> None:
    h = harness
    owner = h.loader
    standby = owner.fresh(Unclaimed())  # another process on the same lake: reads only
    first = [skipped() for _ in range(5)]
    h.load(h.rows(first, H0 + 1))
    h.load(h.rows([skipped()], H0 + MIN + 1))
    assert standby.warm() == 2
    assert standby.warm() == 0, "a file is read once"
    later = [skipped()]
    h.load(h.rows(later, H0 + 2))
    assert standby.warm() == 1

    # The owner dies; the standby takes over with its index, from the same checkpoint.
    taken = standby.fresh(owner.checkpoints, warm=True)
    taken.recover()
    assert taken.deduper is not None and taken.deduper is standby.deduper
    h.loader = taken
    h.load(h.rows([first[0], later[0], skipped()], H0 + 3))  # two re-sends, one new
    assert h.state().buckets[H0].duplicates == 2
    assert sorted(h.keys()).count(key(first[0])) == 1


def test_the_index_of_a_loader_that_processed_is_never_handed_on(harness: Harness) -> None:
    h = harness
    h.loader.process([h.rows([skipped()], H0 + 1)])  # keys of rows not committed
    with pytest.raises(AssertionError):
        h.loader.fresh(Unclaimed(), warm=True)
