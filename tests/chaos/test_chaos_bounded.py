"""The bounded chaos run of ``make test``: 35 s of seeded kill -9s and
SIGSTOPs of the gateway, two loaders (an owner and its standby), nats-server
and the producers (SDK and raw HTTP), then the end-to-end audit of the lake.

The same harness runs longer from the command line (``hourglass chaos
--duration 600 --seed 7``, see docs/chaos.md).  On a failure the assertion
message is the harness's report: the lost or duplicated ids and the fault
timeline that preceded the first of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hourglass_tools.chaos.harness import ChaosConfig, run_chaos
from hourglass_tools.chaos.schedule import DOWN_S, GAP_S, KINDS, plan
from tests.groups import TIMING

pytestmark = [pytest.mark.chaos, TIMING]

SEED = 20261126
DURATION_S = 35.0
MIN_FAULTS = 12  # all six kinds fall in the first 35 s of this seed
PRODUCERS = ["http-0", "http-1", "sdk-0", "sdk-1"]


def test_schedule_is_a_function_of_the_seed() -> None:
    """A failing seed can be replayed: the same faults, in the same order, at the same offsets."""
    first = [f for f, _ in zip(plan(SEED, PRODUCERS, 3.0), range(200), strict=False)]
    again = [f for f, _ in zip(plan(SEED, PRODUCERS, 3.0), range(200), strict=False)]
    other = [f for f, _ in zip(plan(SEED + 1, PRODUCERS, 3.0), range(200), strict=False)]
    assert first == again
    assert first != other
    gaps = [b.at_s - a.at_s for a, b in zip(first, first[1:], strict=False)]
    assert all(GAP_S[0] - 0.01 <= g <= GAP_S[1] + 0.01 for g in gaps)
    assert {f.kind for f in first} == set(KINDS)
    for fault in first:
        if fault.action == "pause":
            assert 3.0 + 1 <= fault.length_s <= 3.0 + 3, fault  # past the lease, not forever
            assert fault.target in ("gateway", "loader")
        else:
            assert DOWN_S[0] <= fault.length_s <= DOWN_S[1], fault
        if fault.kind == "kill:producer":
            assert fault.target in PRODUCERS


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_bounded_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report = run_chaos(
        ChaosConfig(
            directory=tmp_path / "chaos",
            duration_s=DURATION_S,
            seed=SEED,
            min_faults=MIN_FAULTS,
            loaders=2,  # an owner and a standby: faults hit either
        )
    )
    text = report.render()
    verdict = report.verdict
    assert report.faults_injected >= MIN_FAULTS, text
    assert verdict.lost == [], text
    assert verdict.duplicated == [], text
    assert verdict.phantom == [], text
    assert verdict.manifest_problems == [], text
    assert verdict.temp_files == [], text
    assert report.problems == [], text
    assert report.ok, text
    # It was chaos and it did carry traffic: several kinds of fault, events from both kinds
    # of producer, and closed buckets holding them.
    assert len([k for k in KINDS if report.faults[k]]) >= 4, text
    assert report.acknowledged_by_kind["sdk"] > 1000, text
    assert report.acknowledged_by_kind["http"] > 1000, text
    assert verdict.buckets_closed > 0, text
