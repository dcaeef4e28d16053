"""The spool against real files: round trips, named crash cases, a list model.

No gateway here.  A process crash (kill -9) leaves on disk exactly what
``close`` leaves (every record was handed to the kernel by one ``write``, and
``close`` writes no cursor), so "crash, then reopen" is ``close`` then a new
``Spool`` on the same folder; the crash cases that need more (a torn tail, a
flipped bit, a cursor written but segments not yet deleted) edit the files.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hourglass.producer.spool import Spool, SpoolFull

HEADER = 8  # u32 length | u32 crc32
SEGMENT = 100  # small segments: a few records each, so rollover happens all the time
ALL = 10**9


def payload(i: int) -> bytes:
    return f"event-{i:06d}-".encode() + b"x" * 7  # 20 bytes: 28 on disk


def record_bytes(payloads: list[bytes]) -> int:
    return sum(HEADER + len(p) for p in payloads)


def open_spool(path: Path, **options: object) -> Spool:
    return Spool(path, fsync="always", segment_bytes=SEGMENT, **options)


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.log"))


def fill(spool: Spool, n: int, start: int = 0) -> list[bytes]:
    payloads = [payload(i) for i in range(start, start + n)]
    for p in payloads:
        spool.append(p)
    return payloads


def reopen(spool: Spool) -> Spool:
    spool.close()
    return open_spool(spool.dir)


# ------------------------------------------------------------------ round trips


def test_append_read_ack_across_segment_rollover(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 50)
    assert len(segments(tmp_path)) >= 10
    assert spool.next_seq == 51
    assert spool.pending_bytes == record_bytes(payloads)

    got = []
    while batch := spool.read(7, ALL, wait=0):
        got.extend(batch)
    assert got == list(enumerate(payloads, start=1))

    first_segments = len(segments(tmp_path))
    spool.ack(25, record_bytes(payloads[:25]))
    assert spool.cursor == 25 and spool.unacked == 25
    assert spool.pending_bytes == record_bytes(payloads[25:])
    left = segments(tmp_path)
    assert len(left) < first_segments
    assert int(left[0].stem[4:]) <= 26  # the segment holding 26 is still there

    spool.ack(50, record_bytes(payloads[25:]))
    assert spool.pending_bytes == 0 and spool.unacked == 0
    assert len(segments(tmp_path)) == 1  # only the segment being written is kept
    assert spool.wait_acked(50, timeout=0)

    more = fill(spool, 5, start=50)
    assert spool.read(100, ALL, wait=0) == list(enumerate(more, start=51))
    spool.close()


def test_read_respects_max_events_and_max_bytes(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 12)
    assert [s for s, _ in spool.read(3, ALL, wait=0)] == [1, 2, 3]
    assert [s for s, _ in spool.read(100, 41, wait=0)] == [4, 5, 6]  # stops once 41 passed
    assert [p for _, p in spool.read(100, ALL, wait=0)] == payloads[6:]
    assert spool.read(100, ALL, wait=0) == []
    spool.close()


def test_read_waits_for_an_append(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    timer = threading.Timer(0.1, spool.append, args=(b"late",))
    timer.start()
    try:
        assert spool.read(10, ALL, wait=5) == [(1, b"late")]
    finally:
        timer.join()
        spool.close()


def test_restart_resends_records_after_the_cursor_in_order(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 30)
    spool.read(10, ALL, wait=0)
    spool.ack(10, record_bytes(payloads[:10]))
    spool.read(15, ALL, wait=0)  # read, sent, never answered: the crash came first

    spool = reopen(spool)
    assert spool.cursor == 10
    assert spool.next_seq == 31
    assert spool.pending_bytes == record_bytes(payloads[10:])
    assert spool.read(100, ALL, wait=0) == list(enumerate(payloads[10:], start=11))
    assert spool.append(b"after") == 31  # the sequence goes on where it stopped
    assert spool.read(100, ALL, wait=0) == [(31, b"after")]
    spool.close()


def test_a_fresh_spool_is_empty(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "new")
    assert (spool.next_seq, spool.cursor, spool.unacked, spool.pending_bytes) == (1, 0, 0, 0)
    assert spool.read(10, ALL, wait=0) == []
    spool = reopen(spool)
    assert spool.next_seq == 1
    spool.close()


# ------------------------------------------------------------- torn and corrupt


@pytest.mark.parametrize("cut", [1, 3, HEADER, HEADER + 5, HEADER + 19])
def test_torn_tail_is_cut_and_earlier_records_survive(tmp_path: Path, cut: int) -> None:
    """A crash mid-write leaves the last record short (``cut`` bytes of its 28)."""
    spool = open_spool(tmp_path)
    payloads = fill(spool, 18)  # several segments; the last holds 17 and 18
    spool.close()
    last = segments(tmp_path)[-1]
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size - (HEADER + 20) + cut)

    spool = open_spool(tmp_path)
    assert last.stat().st_size == size - (HEADER + 20)  # the torn bytes are gone
    assert spool.next_seq == 18
    assert spool.corrupt_records == 0
    assert not list(tmp_path.glob("*.corrupt*"))
    assert spool.read(100, ALL, wait=0) == list(enumerate(payloads[:17], start=1))
    assert spool.append(b"again") == 18
    spool = reopen(spool)
    assert spool.read(100, ALL, wait=0)[-2:] == [(17, payloads[16]), (18, b"again")]
    spool.close()


def test_zero_filled_tail_is_not_read_as_records(tmp_path: Path) -> None:
    """A machine crash can leave a file longer than what was written, the rest
    zeros; zeros are not events (the SDK never spools an empty payload)."""
    spool = open_spool(tmp_path)
    payloads = fill(spool, 3)
    spool.close()
    last = segments(tmp_path)[-1]
    with open(last, "ab") as f:
        f.write(bytes(64))

    spool = open_spool(tmp_path)
    assert spool.read(100, ALL, wait=0) == list(enumerate(payloads, start=1))
    assert spool.next_seq == 4
    spool.close()


def test_bad_checksum_in_an_earlier_segment_is_moved_aside(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 30)
    spool.close()
    files = segments(tmp_path)
    assert len(files) >= 4
    first = files[0]
    per_segment = int(files[1].stem[4:]) - 1
    data = bytearray(first.read_bytes())
    data[(HEADER + 20) + HEADER + 3] ^= 0xFF  # a bit flip inside record 2's payload
    first.write_bytes(bytes(data))

    spool = open_spool(tmp_path)
    assert spool.corrupt_records == 1
    aside = list(tmp_path.glob(f"{first.name}.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == bytes(data[HEADER + 20 :])  # kept for a human to look at
    assert first.stat().st_size == HEADER + 20
    assert spool.next_seq == 31

    # Record 1 survives, records 2..per_segment are lost, every later one is
    # read with its own sequence number.
    want = [(1, payloads[0])] + list(enumerate(payloads[per_segment:], start=per_segment + 1))
    got = []
    while batch := spool.read(8, ALL, wait=0):
        got.extend(batch)
    assert got == want
    spool.ack(30, record_bytes([p for _, p in want]))
    assert spool.pending_bytes == 0 and spool.unacked == 0
    spool = reopen(spool)
    assert spool.read(100, ALL, wait=0) == []
    spool.close()


# ----------------------------------------------------------------- the cursor


def test_answered_but_cursor_not_written_means_resent(tmp_path: Path) -> None:
    """The gateway answered for 1..20, the crash came before ``ack``: the cursor
    is older than the answers, so those records are sent again (same bytes, so
    the same ``(source, id)``, which the lake deduplicates)."""
    spool = open_spool(tmp_path)
    payloads = fill(spool, 20)
    spool.read(100, ALL, wait=0)
    spool.ack(5, record_bytes(payloads[:5]))
    spool = reopen(spool)
    assert spool.read(100, ALL, wait=0) == list(enumerate(payloads[5:], start=6))
    spool.close()


def test_crash_before_the_cursor_rename_keeps_the_old_cursor(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 20)
    spool.read(100, ALL, wait=0)
    spool.ack(5, record_bytes(payloads[:5]))
    spool.close()
    (tmp_path / "cursor.tmp").write_text("20")  # written, never renamed

    spool = open_spool(tmp_path)
    assert spool.cursor == 5
    assert [s for s, _ in spool.read(100, ALL, wait=0)] == list(range(6, 21))
    spool.ack(20, record_bytes(payloads[5:]))  # the stale temp file is no obstacle
    spool = reopen(spool)
    assert spool.cursor == 20 and spool.read(100, ALL, wait=0) == []
    spool.close()


def test_crash_after_the_cursor_before_deleting_segments(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 30)
    spool.close()
    before = segments(tmp_path)
    second_start = int(before[2].stem[4:])  # the first two segments are answered
    (tmp_path / "cursor").write_text(str(second_start + 1))  # renamed, nothing deleted

    spool = open_spool(tmp_path)
    assert segments(tmp_path) == before[2:]
    assert spool.cursor == second_start + 1
    rest = payloads[second_start + 1 :]
    assert spool.pending_bytes == record_bytes(rest)
    assert spool.read(100, ALL, wait=0) == list(enumerate(rest, start=second_start + 2))
    spool.close()


def test_everything_answered_then_restart(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    payloads = fill(spool, 30)
    spool.read(100, ALL, wait=0)
    spool.ack(30, record_bytes(payloads))
    spool = reopen(spool)
    assert (spool.next_seq, spool.cursor, spool.pending_bytes) == (31, 30, 0)
    assert spool.read(100, ALL, wait=0) == []
    assert spool.append(b"next") == 31
    spool.close()


# ---------------------------------------------------------------- concurrency


def test_fsync_always_from_many_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync="always", segment_bytes=512)
    threads, per_thread = 8, 150
    seqs: dict[int, list[int]] = {t: [] for t in range(threads)}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                seqs[t].append(spool.append(f"t{t}-{i:04d}".encode()))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not errors, errors
    every = sorted(s for found in seqs.values() for s in found)
    assert every == list(range(1, threads * per_thread + 1))  # unique and contiguous
    assert all(found == sorted(found) for found in seqs.values())  # each thread in order

    spool = reopen(spool)
    stored = dict(spool.read(threads * per_thread + 1, ALL, wait=0))
    assert len(stored) == threads * per_thread
    for t, found in seqs.items():
        assert [stored[s] for s in found] == [f"t{t}-{i:04d}".encode() for i in range(per_thread)]
    spool.close()


def test_close_with_interval_fsync_stops_the_syncer_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close`` right after an emit (what ``Producer.close`` does once flushed):
    the background fsync thread must end quietly, not fsync a closed descriptor."""
    crashed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    spool = Spool(tmp_path, fsync="interval", fsync_interval_ms=100)
    spool.append(b"one")
    spool.close()
    time.sleep(0.35)  # the syncer wakes up at least once after the close
    assert not [repr(c.exc_value) for c in crashed]
    again = open_spool(tmp_path)
    assert [s for s, _ in again.read(10, ALL, wait=0)] == [1]
    again.close()


# ---------------------------------------------------------------- spool full


def test_spool_full_blocks_for_the_timeout_then_raises(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=3 * (HEADER + 20))
    fill(spool, 3)
    started = time.monotonic()
    with pytest.raises(SpoolFull, match="max_spool_bytes 84") as raised:
        spool.append(payload(3), timeout=0.3)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 2.0
    assert str(tmp_path) in str(raised.value)
    assert "not yet acknowledged" in str(raised.value)
    assert spool.next_seq == 4  # the refused record was not written
    spool = reopen(spool)
    assert [s for s, _ in spool.read(100, ALL, wait=0)] == [1, 2, 3]
    spool.close()


def test_spool_full_unblocks_when_the_gateway_answers(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=3 * (HEADER + 20))
    payloads = fill(spool, 3)
    spool.read(1, ALL, wait=0)
    timer = threading.Timer(0.2, spool.ack, args=(1, record_bytes(payloads[:1])))
    timer.start()
    started = time.monotonic()
    try:
        assert spool.append(payload(3), timeout=5) == 4
    finally:
        timer.join()
    assert 0.15 < time.monotonic() - started < 4
    spool.close()


def stamp(seq: int, cursor: int) -> bytes:
    return f"|{seq}|{cursor}".encode()


def test_a_stamp_seals_the_record_s_seq_and_the_cursor_when_it_is_written(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path, max_bytes=2 * (HEADER + 24))
    fill(spool, 2)
    spool.read(2, ALL, wait=0)
    spool.ack(1, HEADER + 20)
    assert spool.append(b"p" * 20, stamp=stamp) == 3
    # Full: the stamp is made after the wait, with the cursor the answer moved.
    timer = threading.Timer(0.2, spool.ack, args=(2, HEADER + 20))
    timer.start()
    try:
        assert spool.append(b"q" * 20, stamp=stamp, timeout=5) == 4
    finally:
        timer.join()
    spool.close()
    again = open_spool(tmp_path)  # a restart re-sends the same bytes
    assert [r for _, r in again.read(9, ALL, wait=0)] == [b"p" * 20 + b"|3|1", b"q" * 20 + b"|4|2"]
    again.close()


def test_close_wakes_a_blocked_append(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=HEADER + 20)
    spool.append(payload(0))
    timer = threading.Timer(0.2, spool.close)
    timer.start()
    try:
        with pytest.raises(SpoolFull):
            spool.append(payload(1), timeout=10)
    finally:
        timer.join()


# --------------------------------------------------------------- list model


class SpoolModel(RuleBasedStateMachine):
    """The spool against a list: what was appended, up to where it was answered
    for, up to where it was read since the last (re)open."""

    @initialize()
    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.spool = Spool(self.dir, fsync="always", segment_bytes=64)
        self.records: list[bytes] = []  # seq n is records[n - 1]
        self.cursor = 0
        self.read_upto = 0

    def teardown(self) -> None:
        if hasattr(self, "spool"):
            self.spool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(data=st.binary(min_size=1, max_size=40))
    def append(self, data: bytes) -> None:
        assert self.spool.append(data) == len(self.records) + 1
        self.records.append(data)

    @rule(n=st.integers(1, 6))
    def read(self, n: int) -> None:
        got = self.spool.read(n, ALL, wait=0)
        want = list(enumerate(self.records, start=1))[self.read_upto : self.read_upto + n]
        assert got == want
        self.read_upto += len(got)

    @precondition(lambda self: self.read_upto > self.cursor)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        upto = data.draw(st.integers(self.cursor + 1, self.read_upto), label="upto")
        self.spool.ack(upto, record_bytes(self.records[self.cursor : upto]))
        self.cursor = upto

    @rule()
    def crash_and_reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.dir, fsync="always", segment_bytes=64)
        self.read_upto = self.cursor

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "spool"):
            return
        assert self.spool.next_seq == len(self.records) + 1
        assert self.spool.cursor == self.cursor
        assert self.spool.unacked == len(self.records) - self.cursor
        assert self.spool.pending_bytes == record_bytes(self.records[self.cursor :])
        # Answered segments are deleted: only the one being written may hold no
        # unanswered record.
        files = segments(self.dir)
        assert all(int(f.stem[4:]) <= self.cursor + 1 for f in files[:1])
        assert all(int(f.stem[4:]) > self.cursor for f in files[1:])


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
