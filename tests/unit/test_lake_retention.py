"""Lake retention on real folders: old closed buckets go, recorded first."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hourglass.lake.layout import SUCCESS, bucket_dir
from hourglass.lake.retention import DAY, DELETED, expire_buckets, read_deletions

H = 3600
NOW = int(dt.datetime(2026, 6, 10, 12, 0, tzinfo=dt.UTC).timestamp())
T = "music.SongSkipped"


def make_bucket(lake: Path, start: int, width: int = H) -> Path:
    folder = bucket_dir(lake, T, dt.datetime.fromtimestamp(start, dt.UTC), width)
    folder.mkdir(parents=True)
    (folder / "part-00000000000000000001-00000000000000000002.parquet").write_bytes(b"x")
    (folder / SUCCESS).write_text("{}")
    return folder


def test_buckets_older_than_the_retention_go_and_are_recorded(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    starts = [NOW - 3 * DAY, NOW - 2 * DAY - H, NOW - 2 * DAY, NOW - DAY, NOW - H]
    folders = [make_bucket(lake, s) for s in starts]
    gone = expire_buckets(lake, T, H, days=2, closed_before=NOW, keep_records_s=3 * DAY, now=NOW)
    assert gone == starts[:2], "only buckets that ended 2 days ago or more"
    assert [f.exists() for f in folders] == [False, False, True, True, True]
    assert set(read_deletions(lake, T)) == set(starts[:2])
    assert not (lake / T / f"date={dt.datetime.fromtimestamp(starts[0], dt.UTC):%Y-%m-%d}").exists()


def test_open_buckets_stay_whatever_their_age(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    old = make_bucket(lake, NOW - 5 * DAY)
    assert (
        expire_buckets(
            lake, T, H, days=1, closed_before=NOW - 5 * DAY, keep_records_s=3 * DAY, now=NOW
        )
        == []
    )
    assert old.exists()


def test_a_crash_after_the_record_finishes_at_the_next_round(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    start = NOW - 4 * DAY
    folder = make_bucket(lake, start)
    (lake / T / DELETED).write_text(f'[{{"bucket_start":{start},"deleted_at":{NOW - 60}}}]')
    (folder / SUCCESS).unlink()  # half removed when the process died
    assert expire_buckets(lake, T, H, days=1, closed_before=NOW, keep_records_s=DAY, now=NOW) == [
        start
    ]
    assert not folder.exists()
    assert read_deletions(lake, T)[start].deleted_at == NOW - 60, "recorded once"


def test_records_are_kept_while_the_bus_may_still_hold_tallies(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    (lake / T).mkdir(parents=True)
    # Two buckets deleted long ago; one of them only 2 days ago.
    (lake / T / DELETED).write_text(
        f'[{{"bucket_start":{NOW - 40 * DAY},"deleted_at":{NOW - 30 * DAY}}},'
        f'{{"bucket_start":{NOW - 40 * DAY + H},"deleted_at":{NOW - 2 * DAY}}}]'
    )
    expire_buckets(lake, T, H, days=3, closed_before=NOW, keep_records_s=3 * DAY, now=NOW)
    assert set(read_deletions(lake, T)) == {NOW - 40 * DAY + H}, "by deletion time, not age"
