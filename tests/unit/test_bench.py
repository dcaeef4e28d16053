"""The bench's pure parts: histogram, workload bodies, open-loop schedule, ratios."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from hourglass_tools.bench import report
from hourglass_tools.bench.hist import Histogram, bucket_high, bucket_index
from hourglass_tools.bench.loadgen import Plan, drive
from hourglass_tools.bench.workload import (
    Workload,
    build,
    parse_duration,
    parse_rate,
    request_interval,
    scheduled_at,
)


def _exact(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def test_buckets_are_contiguous_and_tight() -> None:
    previous = -1
    for value in [*range(5000), 2**20 - 1, 2**20, 2**40 + 12345]:
        index = bucket_index(value)
        assert index >= previous
        previous = index
        high = bucket_high(index)
        assert value <= high <= value + value / 128 + 1


def test_percentiles_within_one_percent() -> None:
    rng = random.Random(3)
    values = [int(rng.lognormvariate(8, 1.5)) for _ in range(20_000)] + [5_000_000]
    h = Histogram.of(values)
    for q in (50, 90, 99, 99.9):
        assert h.percentile(q) == pytest.approx(_exact(values, q), rel=0.01)
    assert h.percentile(100) == h.max == 5_000_000
    assert h.min == min(values)
    assert h.total == len(values)
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_record_many_and_merge_match_record() -> None:
    values = list(range(0, 300_000, 7))
    one = Histogram.of(values)
    many = Histogram()
    many.record_many(np.array(values[:1000]))
    rest = Histogram()
    rest.record_many(np.array(values[1000:]))
    many.merge(rest)
    assert many.counts == one.counts
    assert (many.total, many.sum, many.min, many.max) == (one.total, one.sum, one.min, one.max)
    assert Histogram.from_json(json.loads(json.dumps(one.to_json()))).counts == one.counts
    assert Histogram().percentile(99) == 0


def test_bodies_are_valid_sized_and_unique() -> None:
    w = Workload(events_per_request=50, event_bytes=160, types=3)
    batch, ndjson = w.templates()
    events = json.loads(build(batch, 42, 1_764_158_400_000_000))
    assert len(events) == 50
    assert {len(json.dumps(e, separators=(",", ":"))) for e in events} == {160}
    assert len({e["id"] for e in events}) == 50
    assert {e["type"] for e in events} == {"bench.E0", "bench.E1", "bench.E2"}
    assert all(e["data"]["sent_us"] == 1_764_158_400_000_000 for e in events)
    lines = build(ndjson, 42, 1_764_158_400_000_000).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e["id"] for e in events]
    other = json.loads(build(batch, 43, 1_764_158_400_000_000))
    assert not {e["id"] for e in events} & {e["id"] for e in other}


def test_sequenced_bodies_carry_a_session_per_request_and_pass_the_gateway() -> None:
    from hourglass.events import EventTypes
    from hourglass.gateway.validate import Limits, Validator
    from hourglass.gateway.wire import Mode, Payload
    from hourglass.schemas import SchemaRegistry
    from hourglass_tools.bench.workload import write_schemas

    w = Workload(events_per_request=30, event_bytes=200, types=2, sequenced=True)
    batch, ndjson = w.templates()
    body = w.build(batch, 42, 1_764_158_400_000_000)
    events = json.loads(body)
    assert {len(json.dumps(e, separators=(",", ":"))) for e in events} == {200}
    assert [(e["hgproducer"], e["hgseq"], e["hgacked"]) for e in events] == [
        ("000000000042", i + 1, 0) for i in range(30)
    ]
    lines = w.build(ndjson, 42, 1_764_158_400_000_000).splitlines()
    assert [json.loads(line)["hgseq"] for line in lines] == list(range(1, 31))
    import tempfile
    from pathlib import Path as P

    with tempfile.TemporaryDirectory() as tmp:
        registry = SchemaRegistry.load(write_schemas(P(tmp), 2))
    checked = Validator(EventTypes(registry), Limits(1 << 20, 1000)).check(
        Payload(Mode.BATCH, body)
    )
    assert checked.rejected == [] and checked.count == 30


def test_schedule_and_parsing() -> None:
    interval = request_interval(100_000, 1000)
    assert interval == pytest.approx(0.01)
    assert scheduled_at(5.0, 250, interval) == pytest.approx(7.5)
    assert parse_rate("max") == ("max", 0.0)
    assert parse_rate("50%") == ("share", 0.5)
    assert parse_rate("500k") == ("fixed", 500_000.0)
    assert parse_rate("1.2M") == ("fixed", 1_200_000.0)
    assert parse_duration("60s") == 60 and parse_duration("5m") == 300
    with pytest.raises(ValueError):
        parse_rate("0")


class _SlowChannel:
    """Answers every request after ``delay`` seconds, one at a time."""

    def __init__(self, delay: float, events: int) -> None:
        self.delay, self.events = delay, events

    async def send(self, body: bytes) -> tuple[int, int]:
        await asyncio.sleep(self.delay)
        return 200, self.events

    async def close(self) -> None:
        return None


async def test_open_loop_counts_queueing_from_the_scheduled_time() -> None:
    """One connection, answers take 20 ms, requests due every 5 ms: a closed
    loop would report ~20 ms; the open loop reports the growing queue."""
    w = Workload(events_per_request=10, duplicates=0.0)
    parts, _ = w.templates()

    async def factory() -> _SlowChannel:
        return _SlowChannel(0.02, 10)

    plan = Plan(duration_s=0.2, rate_eps=2000, connections=1, drain_s=5)
    result = await drive(factory, w, plan, parts=parts)
    assert result.latency.percentile(99) > 150_000  # µs: far beyond one 20 ms answer
    assert result.lagging  # a quarter of the asked rate was acknowledged
    closed = await drive(factory, w, Plan(duration_s=0.2, connections=1), parts=parts)
    assert closed.latency.percentile(99) < 60_000
    assert closed.unique_acked_events == closed.sent_requests * 10


def test_ratios_and_targets() -> None:
    assert report.ratio(800, 1000) == pytest.approx(0.8)
    assert report.ratio(None, 1000) is None and report.ratio(5, 0) is None
    lat = {"p50": 2.0, "p90": 3.0, "p99": 10.0, "p99.9": 12.0, "max": 15.0}
    result = {
        "config": {"mode": "share", "rate": 0.5},
        "ceilings": {"bus": {"events_per_s": 1_000_000}, "transport": {"events_per_s": 4e6}},
        "pipeline": {
            "mode": "share",
            "events_per_s": 450_000,
            "measured_s": 60,
            "probe": {"events_per_s": 900_000},
            "ack_latency_ms": lat,
            "lag": {"slope_eps": 10.0},
            "lake": {"latency_s": {"p99": 4.0}},
            "close_delay_s": {"max": 3.0},
        },
    }
    result["ratios"] = report.ratios(result)
    assert result["ratios"]["max_to_bus"] == pytest.approx(0.9)
    assert result["ratios"]["run_to_transport"] == pytest.approx(450_000 / 4e6)
    met = {t["target"]: t["met"] for t in report.targets(result)}
    assert met == {
        "durable ingest": False,
        "ingest / raw JetStream": True,
        "end-to-end sustained": False,  # below 500k and shorter than 5 min
        "ack p99 at 50 % of max": True,
        "send to lake p99": True,
        "bucket close delay (max)": True,
    }


def test_profile_summary_leaves_out_the_plumbing() -> None:
    from hourglass_tools.bench.profile import summarize

    root = 'process 7:"python -m hourglass gateway";<module> (hourglass/__main__.py:3)'
    app = "_ingest (/w/src/hourglass/gateway/app.py:10)"
    raw = f"{root};{app};_check (/w/src/hourglass/gateway/validate.py:80) 30\n{root};{app} 10\n"
    summary = summarize(raw)
    assert summary["samples"] == 40
    assert summary["self"][0] == ["_check (hourglass/gateway/validate.py)", 75.0]
    assert [frame for frame, _ in summary["inclusive"]] == [
        "_ingest (hourglass/gateway/app.py)",
        "_check (hourglass/gateway/validate.py)",
    ]


def test_rss_and_lag_trends_are_least_squares_slopes() -> None:
    from hourglass_tools.bench.pipeline import lag_trend, rss_trend

    samples = [
        {"t": 100.0 + i, "lag_events": 50.0, "rss_mib": {"loader": 200.0 + 2 * i, "gateway": 90.0}}
        for i in range(30)
    ]
    trend = rss_trend(samples)
    assert trend["loader"]["slope_mib_per_min"] == pytest.approx(120.0)
    assert trend["loader"]["first_mib"] == 200.0 and trend["loader"]["last_mib"] == 258.0
    assert trend["gateway"]["slope_mib_per_min"] == pytest.approx(0.0)
    assert lag_trend(samples)["slope_eps"] == pytest.approx(0.0)
    assert rss_trend(samples[:2])["loader"]["slope_mib_per_min"] == 0.0  # too few points


def test_the_lake_check_finds_missing_twice_and_unacknowledged_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hourglass_tools.bench.lake import analyze

    folder = tmp_path / "bench.E0" / "date=2026-12-02" / "hour=01"
    folder.mkdir(parents=True)
    # requests 7 (3 events) and 8 (2 events) acknowledged; 9 never was.
    batches = [
        ["000000000007-00000", "000000000007-00001", "000000000008-00000"],
        ["000000000007-00001", "000000000009-00000"],  # 7-1 twice; 7-2 and 8-1 missing
    ]
    for i, ids in enumerate(batches):
        table = pa.table({"id": ids, "sent_us": [1] * len(ids)})
        pq.write_table(table, folder / f"part-{i}.parquet")
    result = analyze(tmp_path, ["bench.E0"], (0.0, 1.0), {7: 3, 8: 2})
    assert result.ids_checked
    assert (result.rows, result.distinct, result.twice) == (5, 4, 1)
    assert (result.missing, result.unacked) == (2, 1)
    pq.write_table(pa.table({"id": ["other"], "sent_us": [1]}), folder / "part-9.parquet")
    assert not analyze(tmp_path, ["bench.E0"], (0.0, 1.0), {7: 3}).ids_checked


def test_the_lake_follower_times_rows_by_their_first_file_not_the_merged_one(
    tmp_path: Path,
) -> None:
    """Compaction replaces a bucket's files with one carrying the newest file's mtime;
    timed by that file, the first flush's rows would look 50 s late."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hourglass.lake.layout import part_name
    from hourglass_tools.bench.lake import LakeFollower

    folder = tmp_path / "t" / "date=2026-12-02" / "hour=17" / "minute=00"
    folder.mkdir(parents=True)
    base = 1_796_000_000  # s

    def write(first: int, last: int, sent_s: list[float], mtime_s: float) -> Path:
        path = folder / part_name(first, last)
        sent = pa.array([int(s * 1e6) for s in sent_s], pa.int64())
        pq.write_table(pa.table({"sent_us": sent}), path)
        os.utime(path, (mtime_s, mtime_s))
        return path

    follower = LakeFollower(tmp_path, ["t"])
    a = write(1, 10, [base + 0.5, base + 1.5], base + 2.5)  # landed 2 s and 1 s after sent
    follower.look()
    b = write(11, 20, [base + 50.0], base + 51.0)  # 1 s
    follower.look()
    follower.look()  # seen files are read once
    a.unlink()
    b.unlink()
    write(1, 20, [base + 0.5, base + 1.5, base + 50.0], base + 51.0)  # merged at close
    follower.look()

    hist, rows = follower.latency((base, base + 60))
    assert rows == 3 and hist.total == 3
    assert hist.max < 2.1e6, "timed by the merged file"
    assert follower.latency((base + 1, base + 60))[1] == 2  # by the second each was sent
