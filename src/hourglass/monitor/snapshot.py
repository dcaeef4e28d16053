"""What the dashboard shows, as it travels: a snapshot of every type's recent
buckets (``watch.py`` builds it), encoded once per refresh as JSON for the page,
and drawn by ``terminal.py``.  Cells and minutes are JSON arrays, not objects:
300 types x 48 buckets is 14,400 of them in one snapshot."""

from __future__ import annotations

import msgspec


class Cell(msgspec.Struct, array_like=True):
    """One bucket of one type on the dashboard (a JSON array: 14,400 of them in a
    snapshot of 300 types x 48 buckets)."""

    start: int
    state: str  # open, overdue, ontime, late, incomplete, skewed, empty
    published: int | None
    delivered: int
    duplicates: int
    skewed: int
    count: int
    close_delay_s: float | None


class TypeRow(msgspec.Struct):
    type: str
    owner: str
    tier: int
    target_s: int
    enabled: bool
    partitions: int
    lag_events: int
    lag_s: float
    overdue_s: float
    overdue: int
    budget_bytes: int
    unconsumed_bytes: float
    dedup_window_s: float | None
    dedup_configured_s: int
    cells: list[Cell]


class Minute(msgspec.Struct, array_like=True):
    minute: int  # epoch minute
    events: int  # received by gateways (tallies)
    requests: int  # answered by the gateways whose leases were read
    p50_ms: float | None
    p99_ms: float | None


class Snapshot(msgspec.Struct):
    now: float
    bucket: str
    width_s: int
    buckets: int
    types: list[TypeRow]
    minutes: list[Minute]
    gateways: int
    refresh_s: float
    errors: list[str]


STATES = ("open", "overdue", "ontime", "late", "incomplete", "skewed", "empty")


def per_bucket(cumulative: list[int]) -> list[int]:
    return [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]


def quantile(bounds: list[float], counts: list[int] | None, q: float) -> float | None:
    """Prometheus's histogram_quantile on one minute's (non-cumulative) counts, in
    ms; ``counts`` has one more entry than ``bounds``, the answers above the last."""
    if not counts or not bounds:
        return None
    bounds = [*bounds, float("inf")]
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for bound, n in zip(bounds, counts, strict=True):
        if seen + n >= rank and n > 0:
            if bound == float("inf"):
                return lower * 1000
            return (lower + (bound - lower) * (rank - seen) / n) * 1000
        seen += n
        lower = bound if bound != float("inf") else lower
    return lower * 1000
