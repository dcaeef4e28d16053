"""Prometheus metrics of one gateway process (its own registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_EVENTS = (1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(
            "hourglass_events_accepted",
            "Events acknowledged durable on the bus.",
            ["type"],
            registry=r,
        )
        self.rejected = Counter(
            "hourglass_events_rejected",
            "Events rejected, by reason.",
            ["type", "reason"],
            registry=r,
        )
        self.requests = Counter(
            "hourglass_requests", "HTTP requests answered, by status.", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            "hourglass_request_seconds",
            "Time from request start to response.",
            buckets=_LATENCY,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "hourglass_publish_seconds",
            "Bus publish until JetStream acknowledged it.",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_events = Histogram(
            "hourglass_bus_message_events",
            "Events per bus message (group commit size).",
            buckets=_EVENTS,
            registry=r,
        )
        self.batch_bytes = Histogram(
            "hourglass_bus_message_bytes",
            "Bytes per bus message.",
            buckets=(1_024, 16_384, 65_536, 262_144, 1_048_576, 4_194_304),
            registry=r,
        )
        self.inflight = Gauge(
            "hourglass_inflight_events", "Events parsed but not yet answered.", registry=r
        )
        self.bus_connected = Gauge(
            "hourglass_bus_connected", "1 when the bus connection is up.", registry=r
        )
        # A gateway whose lease lapses is no longer waited for by the loader:
        # its events may be counted as skewed (bus/marks.py).
        self.lease_renewed = Gauge(
            "hourglass_gateway_lease_renewed_timestamp_seconds",
            "When this gateway last renewed its lease and sent its markers (Unix seconds).",
            registry=r,
        )
        self.lease_ttl = Gauge(
            "hourglass_gateway_lease_ttl_seconds",
            "How long a lease lives without renewal (lease_ttl_s).",
            registry=r,
        )
        self.heartbeat_failures = Counter(
            "hourglass_gateway_heartbeat_failures",
            "Heartbeats (lease renewal and markers) that failed.",
            registry=r,
        )

    def observe_publish(self, subject: str, events: int, nbytes: int, seconds: float) -> None:
        self.publish_seconds.observe(seconds)
        self.batch_events.observe(events)
        self.batch_bytes.observe(nbytes)

    def answered(self) -> tuple[int, list[float], list[int]]:
        """Requests answered, the finite latency bounds, and the cumulative count
        at each bound and then of all (``+Inf``, which JSON cannot hold): what
        the gateway's lease carries to the dashboard."""
        bounds: list[float] = []
        counts: list[int] = []
        for metric in self.request_seconds.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    if le != float("inf"):
                        bounds.append(le)
                    counts.append(int(sample.value))
        return (counts[-1] if counts else 0), bounds, counts

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
