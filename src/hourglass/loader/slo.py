"""Each type's service level as the loader publishes it: who owns the type, its
timeliness tier and that tier's target (``types`` and ``tier_targets_s`` in the
settings), so alerts and dashboards can join every per-type metric with them.

``hourglass_type_info{type, owner, tier}`` is 1 for every type (Prometheus's
info pattern: join on ``type``); ``hourglass_type_timeliness_target_seconds`` is
how long after a bucket's end its close may come; ``hourglass_type_enabled`` is
0 for a type the gateways refuse.  Their values come from the settings alone, so
every loader of a deployment publishes the same ones.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from hourglass.config import Settings


def describe_types(registry: CollectorRegistry, settings: Settings, names: list[str]) -> None:
    info = Gauge(
        "hourglass_type_info",
        "1 for each event type, labelled with its owner and timeliness tier.",
        ["type", "owner", "tier"],
        registry=registry,
    )
    target = Gauge(
        "hourglass_type_timeliness_target_seconds",
        "How long after a bucket's end the type's tier allows its close.",
        ["type"],
        registry=registry,
    )
    enabled = Gauge(
        "hourglass_type_enabled",
        "0 for a type the gateways refuse (types.<type>.enabled = false), else 1.",
        ["type"],
        registry=registry,
    )
    for name in names:
        t = settings.type_settings(name)
        info.labels(name, t.owner, str(t.tier)).set(1)
        target.labels(name).set(settings.tier_targets_s[t.tier])
        enabled.labels(name).set(1 if t.enabled else 0)
