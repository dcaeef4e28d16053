"""A gateway's lease carries its answers to the dashboard (``bus/marks.py``):
readers of either version read either version's lease."""

from __future__ import annotations

import msgspec

from hourglass.bus.marks import Lease, Marker, _lease
from hourglass.gateway.metrics import GatewayMetrics
from hourglass.monitor.snapshot import per_bucket, quantile


def test_an_earlier_lease_reads_as_one_without_answers() -> None:
    assert _lease(msgspec.json.encode(Marker("gw", 5))) == Lease("gw", 5)


def test_a_lease_with_extras_of_another_shape_keeps_its_marker() -> None:
    value = b'{"gateway":"gw","watermark":5,"latency_le":"soon"}'
    assert _lease(value) == Lease("gw", 5)


def test_an_earlier_reader_reads_the_marker_of_a_new_lease() -> None:
    lease = Lease("gw", 5, 3, [0.1], [2, 3])
    assert msgspec.json.decode(msgspec.json.encode(lease), type=Marker) == Marker("gw", 5)


def test_the_gateway_reports_cumulative_counts_and_finite_bounds() -> None:
    metrics = GatewayMetrics()
    for seconds in (0.0001, 0.003, 0.003, 20.0):
        metrics.request_seconds.observe(seconds)
    requests, bounds, counts = metrics.answered()
    assert requests == 4 and len(counts) == len(bounds) + 1
    assert float("inf") not in bounds
    assert per_bucket(counts)[0] == 1 and sum(per_bucket(counts)) == 4
    # JSON holds it (no +Inf), and the dashboard's quantile reads it back.
    lease = msgspec.json.decode(
        msgspec.json.encode(Lease("gw", 1, *metrics.answered())), type=Lease
    )
    p50 = quantile(lease.latency_le, per_bucket(lease.latency_counts), 0.5)
    assert p50 is not None and 2 < p50 <= 5  # ms: between the 2 and 5 ms bounds
    p99 = quantile(lease.latency_le, per_bucket(lease.latency_counts), 0.99)
    assert p99 == 10_000  # above the last bound: the last bound, as Prometheus says
