"""StreamLoader without a bus: process → flush → close_ready on real files, fake clock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hourglass.lake.layout import part_name
from tests.unit.loader.conftest import H0, Crash, CrashAt, Harness, key, skipped

MIN = 60


def _assert_manifest_matches_folder(h: Harness, start: float) -> None:
    m = h.manifest(start)
    assert m is not None
    folder = h.folder(start)
    present = sorted(p.name for p in folder.glob("*.parquet"))
    assert sorted(f.name for f in m.files) == present
    for f in m.files:
        data = (folder / f.name).read_bytes()
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert f.rows == pq.ParquetFile(folder / f.name).metadata.num_rows
    assert m.count == sum(f.rows for f in m.files)


# ------------------------------------------------------------------- flushing


def test_flush_writes_one_part_per_bucket_then_the_checkpoint(harness: Harness) -> None:
    h = harness
    a = [skipped() for _ in range(3)]
    b = [skipped() for _ in range(2)]
    assert h.load(h.rows(a, H0 + 5), h.rows(b, H0 + MIN + 5)) == 2
    assert h.keys_in(H0) == [key(e) for e in a]
    assert h.keys_in(H0 + MIN) == [key(e) for e in b]
    assert [p.name for p in h.folder(H0).iterdir()] == [part_name(1, 2)]
    assert h.state().committed_seq == 2
    # Nothing new: nothing written, the same sequence to acknowledge.
    assert h.loader.flush() == 2
    assert len(list((h.lake).rglob("*.parquet"))) == 2


def test_markers_alone_advance_the_checkpoint(harness: Harness) -> None:
    h = harness
    assert h.load(h.marker("gw-a", H0 + 1), h.marker("gw-b", H0 + 2)) == 2
    state = h.state()
    assert state.committed_seq == 2
    assert state.markers == {"gw-a": (H0 + 1) * 1_000_000, "gw-b": (H0 + 2) * 1_000_000}
    assert not h.lake.exists() or not list(h.lake.rglob("*.parquet"))


def test_messages_at_or_below_the_checkpoint_are_skipped(harness: Harness) -> None:
    h = harness
    events = [skipped() for _ in range(4)]
    first = h.rows(events, H0 + 1)
    h.load(first)
    h.restart()
    h.load(first)  # redelivered: the sequence number says it is done
    assert h.keys() == [key(e) for e in events]
    assert h.loader.stats.duplicates == 0


# ------------------------------------------------------------------------ dedup


def test_duplicates_dropped_in_request_later_request_bucket_hour_and_restart(
    harness: Harness,
) -> None:
    h = harness
    a = [skipped() for _ in range(5)]
    h.load(h.rows(a + a[:2], H0 + 1))  # 2 duplicates in the same message
    h.loader.process([h.rows(a[:1], H0 + 2)])  # a later request, same bucket, unflushed
    h.loader.process([h.rows(a[1:2], H0 + 2)])
    h.loader.flush()
    h.load(h.rows(a[2:3], H0 + MIN + 1))  # a later bucket
    h.load(h.rows(a[3:4], H0 + 3600 + 1))  # a later hour
    h.restart()
    h.load(h.rows(a, H0 + 3600 + 2 * MIN))  # after a restart: all five again
    other_source = dict(a[0], source="/elsewhere")  # same id, other source: not a duplicate
    h.load(h.rows([other_source], H0 + 3600 + 2 * MIN))
    assert sorted(h.keys()) == sorted([key(e) for e in a] + [key(other_source)])
    counts = {b: (c.duplicates, c.skewed) for b, c in h.state().buckets.items()}
    assert counts == {H0: (4, 0), H0 + MIN: (1, 0), H0 + 3600: (1, 0), H0 + 3600 + 2 * MIN: (5, 0)}


def test_duplicates_dropped_counted_in_the_manifest(harness: Harness) -> None:
    h = harness
    a = [skipped() for _ in range(3)]
    h.load(h.rows(a + a, H0 + 1), h.rows(a[:1], H0 + 2))
    h.restart()
    h.load(h.rows(a, H0 + 3), h.marker("gw", H0 + MIN))
    h.clock.now = H0 + MIN + 1
    [m] = h.loader.close_ready({"gw"}, caught_up=True)
    assert (m.count, m.duplicates_dropped, m.skewed) == (3, 7, 0)
    _assert_manifest_matches_folder(h, H0)


def test_dedup_window_expires(tmp_path: Path) -> None:
    h = Harness(tmp_path, window_s=3600)
    e = skipped()
    h.load(h.rows([e], H0 + 1))
    for minute in range(10, 180, 10):  # traffic goes on: keys move to runs, slices age
        h.clock.now = H0 + minute * 60
        h.load(h.rows([skipped()], h.clock.now))
    h.clock.now = H0 + 3 * 3600
    h.load(h.rows([e], H0 + 3 * 3600))  # beyond the window: a new event again
    assert sorted(h.keys()).count(key(e)) == 2
    h.restart()  # and the index read back does not reach back past the window either
    h.load(h.rows([e], H0 + 3 * 3600 + 1))
    assert sorted(h.keys()).count(key(e)) == 2


def test_duplicate_of_a_row_moved_to_another_hour_is_dropped(tmp_path: Path) -> None:
    """Rows pending when their (hourly) bucket closes are written to the next hour;
    a re-send of one of them must still be found."""
    h = Harness(tmp_path, width_s=3600)
    h.load(h.rows([skipped()], H0 + 10), h.marker("gw-live", H0 + 3600))
    late = skipped()  # from a gateway whose lease expired: after gw-live's marker
    h.loader.process([h.rows([late], H0 + 3500)])
    h.clock.now = H0 + 3600 + 1
    [closed] = h.loader.close_ready({"gw-live"}, caught_up=True)
    assert closed.count == 1
    h.loader.flush()  # the late row goes to the open bucket, hour H0+1h
    assert h.keys_in(H0 + 3600) == [key(late)]
    h.load(h.rows([late], H0 + 3600 + 60))  # the client retries it
    assert h.keys().count(key(late)) == 1, "a duplicate reached the lake"


# ----------------------------------------------------------------------- close


def test_close_waits_for_committed_markers_of_every_live_gateway(harness: Harness) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1), h.marker("a", H0 + MIN), h.marker("b", H0 + 30))
    h.clock.now = H0 + MIN + 5
    assert h.loader.close_ready({"a", "b"}, caught_up=True) == []  # b is behind
    h.loader.process([h.marker("b", H0 + MIN)])
    assert h.loader.close_ready({"a", "b"}, caught_up=True) == []  # b's marker not committed
    assert h.loader.close_ready(None, caught_up=True) == []  # leases unknown
    h.loader.flush()
    [m] = h.loader.close_ready({"a", "b"}, caught_up=True)
    assert m.bucket_start.timestamp() == H0 and m.count == 1
    assert m.close_delay_s == pytest.approx(5)
    assert h.state().next_close == H0 + MIN
    _assert_manifest_matches_folder(h, H0)


def test_dead_gateway_stops_holding_the_bucket_once_its_lease_is_gone(harness: Harness) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1), h.marker("a", H0 + MIN), h.marker("dead", H0 + 20))
    h.clock.now = H0 + MIN + 1
    assert h.loader.close_ready({"a", "dead"}, caught_up=True) == []
    assert len(h.loader.close_ready({"a"}, caught_up=True)) == 1


def test_without_live_gateways_close_when_caught_up(harness: Harness) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1))
    h.clock.now = H0 + MIN - 1
    assert h.loader.close_ready(set(), caught_up=True) == []  # not over yet
    h.clock.now = H0 + MIN + 1
    assert h.loader.close_ready(set(), caught_up=False) == []  # bus not drained
    h.loader.process([h.rows([skipped()], H0 + MIN)])
    assert h.loader.close_ready(set(), caught_up=True) == []  # processed, not committed
    h.loader.flush()
    assert [m.count for m in h.loader.close_ready(set(), caught_up=True)] == [1]


def test_idle_buckets_get_empty_manifests(harness: Harness) -> None:
    h = harness
    h.load(h.rows([skipped(), skipped()], H0 + 1), h.marker("gw", H0 + 4 * MIN))
    h.clock.now = H0 + 4 * MIN + 2
    closed = h.loader.close_ready({"gw"}, caught_up=True)
    assert [(m.bucket_start.timestamp(), m.count) for m in closed] == [
        (H0, 2),
        (H0 + MIN, 0),
        (H0 + 2 * MIN, 0),
        (H0 + 3 * MIN, 0),
    ]
    for i in range(4):
        _assert_manifest_matches_folder(h, H0 + i * MIN)
    assert h.manifest(H0 + MIN).files == []  # type: ignore[union-attr]


def test_a_loader_that_never_saw_rows_closes_from_now(harness: Harness) -> None:
    h = harness
    h.clock.now = H0 + 10
    h.load(h.marker("gw", H0 + 10))
    assert h.loader.close_ready({"gw"}, caught_up=True) == []
    h.clock.now = H0 + MIN + 3
    h.load(h.marker("gw", H0 + MIN + 2))
    [m] = h.loader.close_ready({"gw"}, caught_up=True)
    assert (m.bucket_start.timestamp(), m.count, m.files) == (H0, 0, [])


# ------------------------------------------------------------------------ skew


def test_rows_for_a_closed_bucket_go_to_the_open_one_as_skewed(harness: Harness) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1), h.marker("gw", H0 + MIN))
    h.clock.now = H0 + MIN + 1
    assert len(h.loader.close_ready({"gw"}, caught_up=True)) == 1
    before = h.snapshot(H0)
    late = [skipped(), skipped()]
    h.load(h.rows(late, H0 + 30), h.marker("gw", H0 + 2 * MIN))  # stamped in the closed one
    h.restart()  # and once more after a restart
    late2 = [skipped()]
    h.load(h.rows(late2, H0 + 31))
    assert h.snapshot(H0) == before, "a closed bucket changed"
    assert sorted(h.keys_in(H0 + MIN)) == sorted(key(e) for e in late + late2)
    h.clock.now = H0 + 2 * MIN + 1
    [m] = h.loader.close_ready({"gw"}, caught_up=True)
    assert (m.count, m.skewed, m.duplicates_dropped) == (3, 3, 0)
    _assert_manifest_matches_folder(h, H0 + MIN)


def test_rows_pending_when_their_bucket_closes_are_moved_not_written_there(
    harness: Harness,
) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1), h.marker("gw", H0 + MIN))
    late = skipped()
    h.loader.process([h.rows([late], H0 + 50)])  # pending, then its bucket closes
    h.clock.now = H0 + MIN + 1
    [m] = h.loader.close_ready({"gw"}, caught_up=True)
    before = h.snapshot(H0)
    h.loader.flush()
    assert h.snapshot(H0) == before
    assert h.keys_in(H0 + MIN) == [key(late)]
    assert h.state().buckets[H0 + MIN].skewed == 1


# --------------------------------------------------------------------- crashes


@pytest.mark.parametrize(
    ("point", "n"),
    [
        ("loader.after_part", 1),
        ("loader.after_part", 2),
        ("loader.before_checkpoint", 1),
        ("lake.staged", 2),  # the second part staged, its folder not yet fsynced
        ("lake.before_rename", 1),  # the checkpoint, still a temp file
    ],
)
def test_recover_deletes_what_an_interrupted_flush_left(
    harness: Harness, crash_at: CrashAt, point: str, n: int
) -> None:
    h = harness
    old = [skipped() for _ in range(3)]
    h.load(h.rows(old, H0 + 1))
    committed = sorted(p.name for p in h.lake.rglob("*") if p.is_file())
    new = [skipped() for _ in range(4)]
    batch = [h.rows(new[:2] + old[:1], H0 + 2), h.rows(new[2:], H0 + MIN + 2)]
    crash_at(point, n)
    with pytest.raises(Crash):
        h.load(*batch)
    assert sorted(p.name for p in h.lake.rglob("*") if p.is_file()) != committed
    crash_at("none")
    h.restart()  # start-up: orphans above the checkpoint and temp files are gone
    assert sorted(p.name for p in h.lake.rglob("*") if p.is_file()) == committed
    assert h.state().committed_seq == 1
    h.load(*batch)  # redelivered from the checkpoint on
    assert sorted(h.keys()) == sorted(key(e) for e in old + new)
    assert h.state().buckets[H0].duplicates == 1


def test_crash_after_checkpoint_redelivery_is_skipped(harness: Harness, crash_at: CrashAt) -> None:
    h = harness
    events = [skipped() for _ in range(3)]
    message = h.rows(events, H0 + 1)
    crash_at("loader.after_checkpoint")
    with pytest.raises(Crash):
        h.load(message)
    crash_at("none")
    h.restart()
    h.load(message)
    assert h.keys() == [key(e) for e in events]


def test_crash_before_the_close_s_save_closes_the_bucket_again(
    harness: Harness, crash_at: CrashAt
) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1), h.marker("gw", H0 + MIN))
    h.clock.now = H0 + MIN + 1
    crash_at("loader.after_manifest")
    with pytest.raises(Crash):
        h.loader.close_ready({"gw"}, caught_up=True)
    crash_at("none")
    assert "_SUCCESS.json" not in h.snapshot(H0), "a manifest visible before its save"
    h.restart()
    assert not [n for n in h.snapshot(H0) if n.startswith(".tmp-")], "the staged one is swept"
    h.loader.close_ready({"gw"}, caught_up=True)
    assert h.state().next_close == H0 + MIN
    _assert_manifest_matches_folder(h, H0)


def test_crash_after_the_close_s_save_leaves_the_bucket_closed(
    harness: Harness, crash_at: CrashAt
) -> None:
    h = harness
    h.load(h.rows([skipped()], H0 + 1), h.marker("gw", H0 + MIN))
    h.clock.now = H0 + MIN + 1
    crash_at("loader.after_close_checkpoint")
    with pytest.raises(Crash):
        h.loader.close_ready({"gw"}, caught_up=True)
    crash_at("none")
    assert "_SUCCESS.json" not in h.snapshot(H0) and h.state().next_close == H0 + MIN
    h.restart()  # publishes the committed manifest
    closed = h.snapshot(H0)
    assert list(closed) == ["_SUCCESS.json", *[n for n in closed if n.startswith("part-")]]
    # A late row (its gateway's lease had expired) goes to the open bucket.
    late = skipped()
    h.load(h.rows([late], H0 + 40))
    assert h.snapshot(H0) == closed, "a bucket with _SUCCESS.json was modified"
    h.loader.close_ready({"gw"}, caught_up=True)
    assert h.keys().count(key(late)) == 1
    _assert_manifest_matches_folder(h, H0)


# ------------------------------------------------------------------ quarantine


def test_unconvertible_message_is_quarantined_and_the_rest_loaded(harness: Harness) -> None:
    h = harness
    good = [skipped()]
    h.load(h.rows(good, H0 + 1), h.raw(b"this is not json\n"))
    assert h.keys() == [key(good[0])]
    assert h.loader.stats.quarantined == 1
    assert (h.root / "quarantine" / f"{2:020d}.ndjson").read_bytes() == b"this is not json\n"


def test_unconvertible_message_alone_is_quarantined_not_retried_forever(harness: Harness) -> None:
    h = harness
    bad = h.raw(b"this is not json\n")
    assert h.load(bad, h.marker("gw", H0 + 1)) == 2
    assert h.loader.stats.quarantined == 1
    assert h.state().committed_seq == 2
