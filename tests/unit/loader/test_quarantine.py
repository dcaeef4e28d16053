"""The quarantine's bound: at it the stream waits (EDQUOT), it never drops a message."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from hourglass.loader.metrics import is_disk_full
from hourglass.loader.quarantine import Quarantine
from tests.unit.loader.conftest import H0, Harness, key, skipped


def test_a_message_past_the_bound_is_refused_with_edquot_and_nothing_written(
    tmp_path: Path,
) -> None:
    q = Quarantine(tmp_path / "q", max_bytes=10)
    assert q.keep(1, b"123456")[1] == 6
    assert q.keep(1, b"123456")[1] == 6, "a retry of the same message counts once"
    with pytest.raises(OSError) as refused:
        q.keep(2, b"12345")
    assert refused.value.errno == errno.EDQUOT and is_disk_full(refused.value)
    assert "quarantine_max_bytes" in str(refused.value)
    assert sorted(p.name for p in q.folder.iterdir()) == [f"{1:020d}.ndjson"]


def test_the_stream_waits_at_the_bound_and_goes_on_once_the_bound_is_raised(
    harness: Harness,
) -> None:
    h = harness
    h.loader.quarantine.max_bytes = 25  # room for the first bad message, not the second
    good = [skipped()]
    batch = [h.raw(b"not json, number one\n"), h.rows(good, H0 + 1), h.raw(b"not json 2\n")]
    with pytest.raises(OSError) as full:
        h.loader.process(batch)
    assert full.value.errno == errno.EDQUOT
    assert h.loader.processed_seq == 0 and h.loader.pending_bytes() == 0, "nothing half-done"
    assert len(list(h.loader.quarantine.folder.iterdir())) == 1
    h.loader.quarantine.max_bytes = 64  # the operator raises the bound
    h.loader.process(batch)  # the service's retry
    assert h.loader.flush() == 3
    assert h.keys() == [key(good[0])]
    assert h.loader.stats.quarantined == 3  # 1 before the bound, then 2 on the retry
