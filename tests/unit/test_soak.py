"""The soak verdict on made-up samples: flat series pass, a growing one fails."""

from __future__ import annotations

from typing import Any

from hourglass_tools.bench import soak

T0 = 1_000_000.0


def samples(
    minutes: int, *, rss_growth: float = 0.0, lag_growth: float = 0.0, backlog_growth: float = 0.0
) -> list[dict[str, Any]]:
    out = []
    for second in range(minutes * 60 + 1):
        m = second / 60
        out.append(
            {
                "t": T0 + second,
                "loader_rows": 0.0,
                "acked": 1000.0 * second,
                "lag_events": 500.0 + lag_growth * m,
                "rss_mib": {"gateway": 50.0, "loader": 600.0 + rss_growth * m},
                "stream_bytes": 8e6 + (second % 7) * 1e5,
                "lake_bytes": 1e6 * m,
                "state_bytes": 4096.0,
                "compaction_backlog": float(second % 2) + int(backlog_growth * m),
            }
        )
    return out


def test_per_minute_rows_carry_the_rate_and_the_last_values() -> None:
    rows = soak.per_minute(samples(3), T0)
    assert [r["minute"] for r in rows] == [1, 2, 3, 4]  # the sample at 3:00 opens minute 4
    assert round(rows[1]["acked_eps"]) == 1000
    assert rows[1]["rss_mib"]["loader"] == 600.0


def test_flat_series_pass_and_the_lake_is_only_reported() -> None:
    rows = soak.per_minute(samples(16), T0)
    judged = soak.verdict(rows, budget=1 << 30)
    assert judged["grows"] == []
    assert judged["minutes"][0] == soak.WARMUP_MIN + 1
    assert judged["slopes"]["lake bytes"]["limit"] is None
    assert soak.render({"rows": rows, "verdict": judged})[-1] == "soak: ok"


def test_a_process_whose_memory_grows_fails_the_soak() -> None:
    rows = soak.per_minute(samples(16, rss_growth=30.0), T0)  # 5 % of 600 MiB a minute
    judged = soak.verdict(rows, budget=1 << 30)
    assert judged["grows"] == ["rss loader MiB"]
    assert "FAILED: rss loader MiB" in soak.render({"rows": rows, "verdict": judged})[-1]


def test_a_lag_that_keeps_growing_fails_the_soak() -> None:
    rows = soak.per_minute(samples(16, lag_growth=5000.0), T0)  # > 1 % of 60 k a minute
    assert soak.verdict(rows, budget=1 << 30)["grows"] == ["loader lag events"]


def test_a_compaction_backlog_that_keeps_growing_fails_the_soak() -> None:
    rows = soak.per_minute(samples(16, backlog_growth=1.0), T0)  # a bucket a minute
    assert soak.verdict(rows, budget=1 << 30)["grows"] == ["compaction backlog buckets"]


def test_a_run_too_short_is_not_judged() -> None:
    judged = soak.verdict(soak.per_minute(samples(2), T0), budget=1 << 30)
    assert judged["grows"] == [] and "too short" in judged["note"]
    # Nine minutes: slopes shown, growth not judged (the run does not fail).
    nine = soak.per_minute(samples(9, rss_growth=30.0), T0)
    judged = soak.verdict(nine, budget=1 << 30)
    assert judged["grows"] == [] and "not judged" in judged["note"]
    assert "GROWS" in "\n".join(soak.render({"rows": nine, "verdict": judged}))


def test_takeover_is_the_standby_s_first_commit_after_the_kill() -> None:
    from hourglass_tools.bench.pipeline import takeover_s

    def at(t: float, owner: float, standby: float) -> dict[str, object]:
        return {"t": t, "loader_rows_by": {"loader": owner, "loader-standby": standby}}

    samples = [at(0, 10, 0), at(1, 20, 0), at(2, 20, 0), at(3, 20, 0), at(4.5, 20, 5)]
    assert takeover_s(samples, "loader", at=1.5) == 3.0
    assert takeover_s(samples[:4], "loader", at=1.5) is None, "no commit yet: no takeover"
