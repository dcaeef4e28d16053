"""The bucket-closing rule alone (loader/close.py): facts in, buckets to close out.

The loader's own tests (test_stream.py) drive the same rule through process,
flush and close_ready; these pin each clause of it, and the manifest-then-
checkpoint order on real files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest

from hourglass.lake.layout import SUCCESS, bucket_dir
from hourglass.lake.manifest import Manifest
from hourglass.lake.store import LocalStore
from hourglass.loader import close
from hourglass.loader.close import Facts, complete, due
from hourglass.loader.staging import publish, sweep
from hourglass.loader.state import BucketCounts, FileCheckpoints, LoaderState

W = 60
START = 1_700_000_040  # a minute's start
END = START + W


def us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def facts(
    live: set[str] | None, *, live_as_of: float = END + 1, drained_as_of: float | None = None
) -> Facts:
    return Facts(live, live_as_of, drained_as_of)


def test_every_live_gateway_must_have_passed_the_end() -> None:
    markers = {"a": us(END), "b": us(END) - 1}
    assert not complete(END, facts({"a", "b"}), markers, all_committed=True)
    assert complete(END, facts({"a"}), markers, all_committed=True)
    assert not complete(END, facts({"a", "c"}), markers, all_committed=True), "c has no marker"


def test_unknown_leases_or_a_view_from_before_the_end_close_nothing() -> None:
    markers = {"a": us(END + 30)}
    assert not complete(END, facts(None), markers, all_committed=True)
    assert not complete(END, facts({"a"}, live_as_of=END - 0.001), markers, all_committed=True)
    assert complete(END, facts({"a"}, live_as_of=END), markers, all_committed=True)


def test_with_no_gateway_alive_the_bus_must_be_drained_after_the_end_and_all_committed() -> None:
    assert not complete(END, facts(set()), {}, all_committed=True), "not known to be drained"
    assert not complete(END, facts(set(), drained_as_of=END - 1), {}, all_committed=True)
    assert not complete(END, facts(set(), drained_as_of=END + 1), {}, all_committed=False)
    assert complete(END, facts(set(), drained_as_of=END), {}, all_committed=True)


def test_due_closes_in_order_and_stops_at_the_first_incomplete_bucket() -> None:
    state = LoaderState(next_close=START, markers={"a": us(START + 2 * W + 5)})
    now = START + 10 * W
    first, starts = due(
        state, facts({"a"}, live_as_of=now), now, W, has_pending=False, all_committed=True
    )
    assert first == START
    assert starts == [START, START + W], "the third bucket ends after the marker"


def test_due_never_closes_a_bucket_that_has_not_ended() -> None:
    state = LoaderState(next_close=START, markers={"a": us(END + 3600)})
    first, starts = due(
        state, facts({"a"}, live_as_of=END), END - 0.5, W, has_pending=False, all_committed=True
    )
    assert (first, starts) == (START, [])


def test_a_stream_that_never_closed_starts_at_the_current_bucket_once_drained() -> None:
    state = LoaderState()
    now = START + 30
    drained = facts(set(), live_as_of=now, drained_as_of=now)
    assert (
        due(state, facts(set(), live_as_of=now), now, W, has_pending=False, all_committed=True)[0]
        is None
    ), "not drained: it cannot know where to start"
    assert due(state, drained, now, W, has_pending=True, all_committed=True)[0] is None
    assert due(state, drained, now, W, has_pending=False, all_committed=True) == (START, [])
    assert due(state, facts(None), now, W, has_pending=False, all_committed=True) == (None, [])


def _manifest_of(lake: Path) -> Manifest:
    folder = bucket_dir(lake, "t", dt.datetime.fromtimestamp(START, dt.UTC), W)
    return msgspec.json.decode((folder / SUCCESS).read_bytes(), type=Manifest)


def test_close_bucket_stages_the_manifest_saves_then_publishes(tmp_path: Path) -> None:
    lake, store = tmp_path / "lake", FileCheckpoints(tmp_path / "t.json")
    state = LoaderState(
        committed_seq=7,
        next_close=START,
        buckets={START: BucketCounts(duplicates=2, skewed=1), END: BucketCounts(skewed=4)},
    )
    manifest, saved = close.close_bucket(LocalStore(lake), "t", W, state, store, now=END + 12.5)
    assert (manifest.count, manifest.duplicates_dropped, manifest.skewed) == (0, 2, 1)
    assert manifest.close_delay_s == 12.5
    assert _manifest_of(lake) == manifest
    assert saved.next_close == END and START not in saved.buckets and END in saved.buckets
    on_disk = store.load()
    assert on_disk.state == saved
    folder = bucket_dir(lake, "t", dt.datetime.fromtimestamp(START, dt.UTC), W)
    assert on_disk.staged == {
        (folder / SUCCESS).relative_to(lake).as_posix(): (folder / ".tmp-e0-_SUCCESS.json.staged")
        .relative_to(lake)
        .as_posix()
    }
    assert sorted(p.name for p in folder.iterdir()) == [SUCCESS], "published, nothing staged"
    assert state.next_close == START, "the caller's checkpoint is not changed in place"


def test_a_manifest_from_before_a_crash_is_kept_not_rewritten(tmp_path: Path) -> None:
    lake, store = tmp_path / "lake", FileCheckpoints(tmp_path / "t.json")
    state = LoaderState(next_close=START)
    first, _ = close.close_bucket(LocalStore(lake), "t", W, state, store, now=END + 1)
    # An earlier version saved its checkpoint after renaming the manifest; a crash
    # between the two: the same bucket is closed again, later.
    again, saved = close.close_bucket(LocalStore(lake), "t", W, state, store, now=END + 99)
    assert again == first and _manifest_of(lake) == first
    assert saved.next_close == END and store.load().staged == {}


def test_skip_closed_moves_past_every_bucket_with_a_manifest() -> None:
    state = LoaderState(next_close=START, buckets={START: BucketCounts(skewed=1)})
    closed = {START, START + W}
    assert close.skip_closed(state, W, closed.__contains__)
    assert state.next_close == START + 2 * W and state.buckets == {}
    assert not close.skip_closed(state, W, closed.__contains__)
    assert not close.skip_closed(LoaderState(), W, closed.__contains__)


@pytest.mark.parametrize("point", ["loader.after_manifest", "loader.after_close_checkpoint"])
def test_a_crash_either_side_of_the_close_s_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """Before the save: no manifest is visible, and recovery's sweep deletes the
    staged one (the bucket is closed again).  After it: recovery publishes it."""
    lake, store = tmp_path / "lake", FileCheckpoints(tmp_path / "t.json")
    folder = bucket_dir(lake, "t", dt.datetime.fromtimestamp(START, dt.UTC), W)

    class Crash(Exception):
        pass

    def crashpoint(at: str) -> None:
        if at == point:
            raise Crash(at)

    monkeypatch.setattr("hourglass.loader.close.crashpoint", crashpoint)
    with pytest.raises(Crash):
        close.close_bucket(
            LocalStore(lake), "t", W, LoaderState(next_close=START), store, now=END + 1
        )
    assert not (folder / SUCCESS).exists(), "nothing visible before the publish"
    assert [p.name for p in folder.iterdir()] == [".tmp-e0-_SUCCESS.json.staged"]
    saved = store.load()
    if point == "loader.after_manifest":
        assert saved.state.next_close is None and saved.staged == {}
        assert (
            sweep(LocalStore(lake), folder.relative_to(lake).as_posix(), 0, keep=[]) == 1
        )  # nothing named in the checkpoint
        assert list(folder.iterdir()) == []
    else:
        assert saved.state.next_close == END
        assert publish(LocalStore(lake), saved.staged) == 1
        assert _manifest_of(lake).bucket_start.timestamp() == START
        assert publish(LocalStore(lake), saved.staged) == 0, "publishing again is a no-op"


def test_markers_of_gateways_long_gone_are_forgotten_live_ones_kept() -> None:
    now = float(END + 7200)
    state = LoaderState(
        markers={
            "live-old": us(now - 5000),  # live: kept however old
            "gone-old": us(now - 3601),  # not live, quiet for over an hour: dropped
            "gone-recent": us(now - 60),  # may come back (a paused gateway): kept
        }
    )
    assert close.prune_markers(state, {"live-old"}, now) == 1
    assert set(state.markers) == {"live-old", "gone-recent"}
