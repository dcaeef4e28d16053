"""The SLO metrics, per event type, as ``hourglass dashboard`` publishes them.

Spotify's three SLOs, plus what explains a miss:

* **timeliness** — ``hourglass_slo_close_delay_seconds`` (histogram: one
  observation per closed bucket, the delay from the bucket's end to its
  ``_SUCCESS.json``), ``hourglass_slo_last_close_delay_seconds`` and
  ``hourglass_slo_last_closed_bucket_end_timestamp_seconds``;
  ``hourglass_slo_overdue_buckets`` and
  ``hourglass_slo_oldest_open_overdue_seconds`` against the type's tier target;
* **skewness** — ``hourglass_slo_skewed_events`` (counter) and
  ``hourglass_slo_last_bucket_skewed_ratio`` (skewed rows / rows of the last
  closed bucket);
* **completeness** — ``hourglass_slo_last_bucket_completeness_ratio``
  ((delivered + duplicates dropped) / published, for the newest *settled*
  bucket: closed, its tallies on the bus, and the next bucket closed too, so
  that its skewed events, which land in the next one, are counted),
  ``hourglass_slo_missing_events`` and ``hourglass_slo_incomplete_buckets``
  over the settled buckets the dashboard keeps;
* **lag** — ``hourglass_slo_lag_events`` (events stored on the bus after the
  loader's checkpoint) and ``hourglass_slo_lag_seconds`` (age of the oldest).

Labels: ``type`` only.  Join them with the loader's ``hourglass_type_info``
for owner and tier.  ``hourglass_slo_refresh_timestamp_seconds`` says the
watcher itself is alive: an alert on it catches a dead dashboard.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From seconds to a day: tier 1's 15 minutes and tier 3's 6 hours are edges.
CLOSE_DELAY_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


class SloMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        t = ["type"]
        self.close_delay = Histogram(
            "hourglass_slo_close_delay_seconds",
            "Per closed bucket: from the bucket's end to its manifest (timeliness).",
            t,
            buckets=CLOSE_DELAY_BUCKETS,
            registry=r,
        )
        self.last_close_delay = Gauge(
            "hourglass_slo_last_close_delay_seconds",
            "The newest closed bucket's close delay.",
            t,
            registry=r,
        )
        self.last_closed_end = Gauge(
            "hourglass_slo_last_closed_bucket_end_timestamp_seconds",
            "End of the newest closed bucket (Unix seconds).",
            t,
            registry=r,
        )
        self.overdue = Gauge(
            "hourglass_slo_overdue_buckets",
            "Open buckets whose end plus the tier's target has passed.",
            t,
            registry=r,
        )
        self.oldest_overdue = Gauge(
            "hourglass_slo_oldest_open_overdue_seconds",
            "How far the oldest open bucket is past its tier's target (0: on time).",
            t,
            registry=r,
        )
        self.skewed = Counter(
            "hourglass_slo_skewed_events",
            "Rows that reached the lake after their bucket closed (manifests' skewed).",
            t,
            registry=r,
        )
        self.skewed_ratio = Gauge(
            "hourglass_slo_last_bucket_skewed_ratio",
            "Skewed rows / rows in the newest closed bucket (skewness).",
            t,
            registry=r,
        )
        self.completeness = Gauge(
            "hourglass_slo_last_bucket_completeness_ratio",
            "(Delivered + duplicates) / published for the newest settled bucket "
            "(closed, tallies on the bus, the next one closed too; 1 = complete).",
            t,
            registry=r,
        )
        self.missing = Gauge(
            "hourglass_slo_missing_events",
            "Published but not delivered, summed over the settled buckets kept.",
            t,
            registry=r,
        )
        self.incomplete = Gauge(
            "hourglass_slo_incomplete_buckets",
            "Settled buckets kept whose delivered + duplicates differ from published.",
            t,
            registry=r,
        )
        self.lag_events = Gauge(
            "hourglass_slo_lag_events",
            "Events stored on the bus after the loader's checkpoint.",
            t,
            registry=r,
        )
        self.lag_seconds = Gauge(
            "hourglass_slo_lag_seconds",
            "Age of the oldest message after the loader's checkpoint (0: none).",
            t,
            registry=r,
        )
        self.refreshed = Gauge(
            "hourglass_slo_refresh_timestamp_seconds",
            "When the watcher last read the bus and the lake (Unix seconds).",
            registry=r,
        )
        self.refresh_seconds = Histogram(
            "hourglass_slo_refresh_seconds",
            "How long one read of the bus and the lake took.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.refresh_errors = Counter(
            "hourglass_slo_refresh_errors",
            "Refreshes that failed (the bus or the lake did not answer).",
            registry=r,
        )
        self.gateways = Gauge(
            "hourglass_slo_gateways_live", "Gateways holding a live lease.", registry=r
        )
