"""Settings, shared by every command.

Precedence, highest first: command-line flags, ``HOURGLASS_<NAME>`` environment
variables, then ``hourglass.toml`` in the working directory (or the file named by
``--config`` / ``HOURGLASS_CONFIG``).  A parent process (``hourglass up``) hands
its resolved settings to its children as JSON in ``HOURGLASS__SETTINGS`` so a
child sees exactly what its parent saw.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from hourglass.exceptions import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
# The largest bus message (the embedded nats-server's max_payload, bus/embedded.py):
# here, below every stage, because the settings are checked against it.
BUS_MAX_PAYLOAD = 8 * MiB

SETTINGS_ENV = "HOURGLASS__SETTINGS"
MAX_PARTITIONS = 256


class TypeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What an operator sets for one event type (``[types."<type>"]`` in
    hourglass.toml): kept apart from its schema, which its producers own and
    whose every change is checked for compatibility."""

    owner: str = ""  # who to call: a team, a channel
    # The timeliness tier: its hours must close within tier_targets_s[tier].
    tier: int = 2
    # False: the gateway refuses the type's events one by one, with the reason,
    # and keeps them in the failed stream (replay them once it is on again).
    enabled: bool = True
    # Overrides of the global settings of the same name; None: the global one.
    # Read them through Settings.max_event_bytes_of and its siblings.
    # An event over the type's own size limit is rejected alone and kept (one
    # over the global limit as well: 413, as without it; gateway/validate.py).
    max_event_bytes: int | None = None
    stream_max_bytes: int | None = None  # the type's budget, shared by its partitions
    dedup_window_s: int | None = None
    partitions: int | None = None  # as type_partitions; both, and different: refused


DEFAULT_TYPE = TypeSettings()


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob, with the default a new user gets."""

    data_dir: str = "hourglass-data"
    # The lake: a folder (default <data_dir>/lake) or s3://bucket/prefix, with
    # s3_endpoint for an S3-compatible store (credentials: the AWS variables and
    # files, lake/s3.py).
    lake: str = ""
    s3_endpoint: str = ""
    schemas: str | None = None  # None: the bundled demo schemas
    host: str = "127.0.0.1"
    port: int = 8080
    bus: str | None = None  # None: the embedded nats-server of data_dir
    bus_port: int = 0  # embedded bus port; 0 picks a free one once and keeps it
    # The embedded bus's nats.log is rotated at this size, this many files kept.
    bus_log_max_bytes: int = 16 * MiB
    bus_log_files: int = 4
    bucket: str = "1h"
    workers: int = 1

    # Request limits (413 beyond them).
    max_body_bytes: int = 8 * MiB  # after decompression
    max_event_bytes: int = 256 * KiB
    max_events_per_request: int = 10_000
    # Back-pressure (429 beyond it): events parsed but not yet answered.
    max_inflight_events: int = 500_000

    # Group commit: one bus message per type carries many requests' events.
    commit_max_bytes: int = 1 * MiB
    commit_max_wait_ms: float = 2.0
    publish_timeout_s: float = 5.0

    # Streams: a byte budget per stream for events not yet in the lake plus a
    # replay window of events that are (bus/retention.py); a stream full of
    # events not yet in the lake refuses new writes (discard new, 503).
    stream_max_bytes: int = 1 * GiB  # JetStream reserves it up front, per stream
    replay_window_s: int = 24 * 3600  # consumed events kept this long, if the budget allows
    # 0: events never age out.  Anything else also removes events the loader has
    # not read (JetStream's max_age knows nothing of consumers): not recommended.
    stream_max_age_s: int = 0
    stream_replicas: int = 0  # 0: 1 on the embedded bus, 3 on an external one
    duplicate_window_s: int = 120
    # A type's stream can be P streams (partitions: bus/jetstream.py), each loaded
    # by any loader of the group, sharing the type's stream_max_bytes evenly.
    # ``partitions`` for every type, ``type_partitions`` ({type = P}) for some.
    # Fixed once a type has streams: changing it is refused (docs/deploy.md).
    partitions: int = 1
    type_partitions: dict[str, int] = {}
    # Per type: owner, timeliness tier, enabled (TypeSettings); and each tier's
    # target, in seconds from a bucket's end to its close (Spotify's timeliness).
    types: dict[str, TypeSettings] = {}
    tier_targets_s: dict[int, int] = msgspec.field(
        default_factory=lambda: {1: 900, 2: 3600, 3: 6 * 3600}
    )

    # Hour close: gateways' markers and leases, the loader's cadence.
    marker_interval_s: float = 1.0
    lease_ttl_s: float = 10.0
    # A loader owns a stream while it renews this lease; a standby takes the
    # stream over this long (plus a second) after its owner stopped renewing.
    loader_lease_ttl_s: float = 10.0
    # Loaders of one bus share its streams, each at most ceil(streams / loaders),
    # handing streams over as loaders join (loader/owner.py).  False: a loader
    # takes every free stream, so the first owns all and the others are its
    # hot standbys (active-passive).
    loader_balance: bool = True
    flush_interval_s: float = 2.0  # events are queryable in the lake within about this
    dedup_window_s: int = 24 * 3600
    # The loader's memory (its RSS, loader/resources.py): half of it is the dedup
    # index (filters and recent keys), an eighth the rows not yet flushed, each
    # shared evenly by the event types; a type's index keeps its keys on disk in
    # <lake>/<type>/_dedup, within dedup_disk_bytes for all types (0: a quarter of
    # the lake disk's free space at start).  When either is full the oldest keys
    # leave before dedup_window_s: the effective window (loader/dedup.py).
    loader_memory_bytes: int = 2 * GiB
    dedup_disk_bytes: int = 0
    dedup_run_keys: int = 0  # keys per run file; 0: what a quarter of a type's share holds
    # Closed buckets older than this many days are deleted (0: never), recorded
    # in <lake>/<type>/_deleted.json for the audit (lake/retention.py).
    lake_retention_days: int = 0
    lake_retention_check_s: float = 600.0  # how often each stream looks for buckets to delete
    # A closed bucket's part files (one per flush) are merged into files of about
    # this size, in the background (loader/compact.py); 0: never merged.
    compact_target_bytes: int = 128 * MiB
    loader_metrics_port: int = 0  # 0: no metrics endpoint
    # ``hourglass dashboard`` (monitor/): the SLO metrics and the built-in page,
    # from the bus and the lake, independent of the loader it watches.
    dashboard_port: int = 8090  # ``hourglass up`` picks a free one unless set
    dashboard_buckets: int = 48  # buckets per type it keeps and shows
    dashboard_refresh_s: float = 5.0
    # Per stream: messages the loader cannot convert are kept up to this; at the
    # bound the stream pauses (loader/quarantine.py), it never drops them.
    quarantine_max_bytes: int = 1 << 30
    # The loader is a batch job that may lag by seconds; a gateway's answer is
    # what producers wait for.  On a shared machine the loader yields the CPU.
    loader_nice: int = 5

    failed_body_cap: int = 1 * MiB  # unparseable bodies are kept up to this size

    api_keys: str | None = None  # TOML file: key = ["type", ...] or "*"
    # The analytics SDKs' protocols (gateway/segment.py, gateway/snowplow.py):
    # each adds its types (schemas/segment, schemas/snowplow) to every process's
    # registry, so the gateway and the loaders must agree on them.
    segment: bool = False  # Segment's HTTP API, which RudderStack's SDKs speak too
    snowplow: bool = False  # Snowplow's tracker protocol (tp2 and the GET pixel)
    # Segment's documented limits; a call over its limit is rejected alone, a
    # batch over its limit refused whole (413); both are kept in the failed stream.
    segment_max_message_bytes: int = 32 * KiB
    segment_max_batch_bytes: int = 500 * KiB
    # Web pages of these origins (scheme://host[:port]) may send (CORS,
    # gateway/cors.py); a request from any other origin is refused with 403.
    cors_origins: list[str] = []
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "info"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def lake_url(self) -> str:
        """Where the lake is: ``lake`` (a path, or ``s3://bucket/prefix``), else
        ``<data-dir>/lake``."""
        return self.lake or str(self.data_path / "lake")

    @property
    def lake_remote(self) -> bool:
        return self.lake_url.startswith("s3://")

    @property
    def lake_id(self) -> str:
        """The lake as loaders compare it (every loader of a bus writes one lake)."""
        return self.lake_url if self.lake_remote else str(self.lake_path.resolve())

    @property
    def lake_path(self) -> Path:
        """The lake's folder on this machine; for a lake on S3, the loader's local
        folder for what needs a file system (its dedup index: a cache, rebuilt
        from the lake by a loader that has none)."""
        return self.data_path / "lake-local" if self.lake_remote else Path(self.lake_url)

    def type_settings(self, type_name: str) -> TypeSettings:
        return self.types.get(type_name, DEFAULT_TYPE)

    def check_type_names(self, known: list[str]) -> None:
        """Refuse per-type settings of types the registry does not have (a typo
        would otherwise be ignored)."""
        for table, names in (("types", self.types), ("type_partitions", self.type_partitions)):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ConfigError(
                    f"{table} names unknown types {unknown}; known: {sorted(known)[:10]}"
                )

    def partitions_of(self, type_name: str) -> int:
        own = self.type_settings(type_name).partitions
        return own if own is not None else self.type_partitions.get(type_name, self.partitions)

    def max_event_bytes_of(self, type_name: str) -> int:
        own = self.type_settings(type_name).max_event_bytes
        return self.max_event_bytes if own is None else own

    def stream_max_bytes_of(self, type_name: str) -> int:
        """The type's stream budget; each of its partitions' streams holds an even
        share (``bus/jetstream.py``)."""
        own = self.type_settings(type_name).stream_max_bytes
        return self.stream_max_bytes if own is None else own

    def dedup_window_of(self, type_name: str) -> int:
        own = self.type_settings(type_name).dedup_window_s
        return self.dedup_window_s if own is None else own

    def checkpoint_path(self, stream: str) -> Path:
        """The loader's checkpoint of ``stream`` (a type name, or ``_failed``)."""
        return self.data_path / "loader" / f"{stream}.json"

    def quarantine_path(self, stream: str) -> Path:
        """Where the loader sets aside bus messages of ``stream`` it cannot read."""
        return self.data_path / "loader" / "quarantine" / stream

    def validate(self) -> Settings:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port} is not a TCP port")
        if self.max_event_bytes > self.commit_max_bytes:
            raise ConfigError(
                f"max_event_bytes ({self.max_event_bytes}) must not exceed "
                f"commit_max_bytes ({self.commit_max_bytes}): an event must fit in a bus message"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be given together")
        if (
            min(
                self.replay_window_s,
                self.stream_max_age_s,
                self.lake_retention_days,
                self.compact_target_bytes,
            )
            < 0
        ):
            raise ConfigError(
                "replay_window_s, stream_max_age_s, lake_retention_days and "
                "compact_target_bytes must not be negative"
            )
        if self.lake_retention_days and self.lake_retention_days * 86400 < self.dedup_window_s:
            raise ConfigError(
                f"lake_retention_days ({self.lake_retention_days}) must keep at least the "
                f"dedup window ({self.dedup_window_s} s): dedup reads the lake's recent files"
            )
        if self.loader_memory_bytes < 64 * MiB or self.dedup_disk_bytes < 0:
            raise ConfigError(
                "loader_memory_bytes must be at least 64 MiB and dedup_disk_bytes not negative"
            )
        if not 0 <= self.loader_nice <= 19:
            raise ConfigError(f"loader_nice {self.loader_nice} must be 0..19")
        for name, n in {"partitions": self.partitions, **self.type_partitions}.items():
            if not 1 <= n <= MAX_PARTITIONS:
                raise ConfigError(f"partitions of {name}: {n}, must be 1..{MAX_PARTITIONS}")
        if self.lake_remote and self.lake_retention_days:
            raise ConfigError(
                "lake_retention_days is for a lake on a file system: on S3, expire old "
                "buckets with the bucket's lifecycle rules (docs/deploy.md)"
            )
        if self.lake.startswith(("s3a://", "gs://", "az://", "http://", "https://")):
            raise ConfigError(f"lake {self.lake!r}: a path or s3://bucket/prefix")
        self._validate_protocols()
        self._validate_types()
        bucket_seconds(self.bucket)
        return self

    def _validate_types(self) -> None:
        for name, t in self.types.items():
            if t.tier not in self.tier_targets_s:
                raise ConfigError(
                    f"types.{name}.tier is {t.tier}; the tiers are those of tier_targets_s "
                    f"({sorted(self.tier_targets_s)})"
                )
            self._validate_overrides(name, t)
        if any(target <= 0 for target in self.tier_targets_s.values()):
            raise ConfigError("tier_targets_s: every target must be a positive number of seconds")

    def _validate_overrides(self, name: str, t: TypeSettings) -> None:
        """A type's limit overrides: positive, and within what the global ones
        must respect too."""
        for key in ("max_event_bytes", "stream_max_bytes", "dedup_window_s", "partitions"):
            value = getattr(t, key)
            if value is not None and value <= 0:
                raise ConfigError(
                    f"types.{name}.{key} is {value}; it must be positive "
                    f"(or left out: the global {key})"
                )
        if t.max_event_bytes is not None:
            self._validate_event_size(name, t.max_event_bytes)
        if t.partitions is not None:
            if t.partitions > MAX_PARTITIONS:
                raise ConfigError(
                    f"types.{name}.partitions is {t.partitions}, must be 1..{MAX_PARTITIONS}"
                )
            also = self.type_partitions.get(name, t.partitions)
            if also != t.partitions:
                raise ConfigError(
                    f"types.{name}.partitions is {t.partitions} and type_partitions gives "
                    f"{name} {also}: set one of them"
                )
        if t.stream_max_bytes is not None:
            share = t.stream_max_bytes // self.partitions_of(name)
            if share < self.commit_max_bytes:
                raise ConfigError(
                    f"types.{name}.stream_max_bytes ({t.stream_max_bytes}) gives each of its "
                    f"{self.partitions_of(name)} stream(s) {share} bytes, under commit_max_bytes "
                    f"({self.commit_max_bytes}): a full bus message could never be stored"
                )
        window = t.dedup_window_s
        if window is not None and self.lake_retention_days:
            if self.lake_retention_days * 86400 < window:
                raise ConfigError(
                    f"lake_retention_days ({self.lake_retention_days}) must keep at least "
                    f"types.{name}.dedup_window_s ({window} s): dedup reads the lake's "
                    "recent files"
                )

    def _validate_event_size(self, name: str, limit: int) -> None:
        """An event of its type's largest size must fit in a body and, once
        accepted, in one bus message, as one of ``max_event_bytes`` must."""
        bounds = {
            "max_body_bytes": self.max_body_bytes,
            "commit_max_bytes": self.commit_max_bytes,
            "the bus's largest message less its headers": BUS_MAX_PAYLOAD - 4096,
        }
        for what, bound in bounds.items():
            if limit > bound:
                raise ConfigError(
                    f"types.{name}.max_event_bytes ({limit}) must not exceed {what} "
                    f"({bound}): an event must fit in a request and in a bus message"
                )

    def _validate_protocols(self) -> None:
        if self.segment and self.segment_max_message_bytes * 2 + 4 * KiB > self.max_event_bytes:
            raise ConfigError(
                f"segment_max_message_bytes ({self.segment_max_message_bytes}) must be under "
                f"half of max_event_bytes ({self.max_event_bytes}): a message's objects are "
                "stored as JSON text, whose escapes can double its size"
            )
        for origin in self.cors_origins:
            if origin != origin.rstrip("/") or "://" not in origin:
                raise ConfigError(
                    f"cors_origins: {origin!r} is not an origin; write scheme://host[:port], "
                    "with no path or trailing slash"
                )


_DURATION = re.compile(r"^(\d+)(s|m|h)$")


def bucket_seconds(text: str) -> int:
    """Parse a bucket width such as ``1h`` or ``5m``; it must divide an hour."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"bucket {text!r}: write it as <n>s, <n>m or <n>h, e.g. 1h or 1m")
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds <= 0 or (seconds < 3600 and 3600 % seconds) or (seconds > 3600 and seconds % 3600):
        raise ConfigError(f"bucket {text!r}: must divide an hour (e.g. 1m, 5m, 15m) or be 1h")
    if seconds > 3600:
        raise ConfigError(f"bucket {text!r}: buckets wider than an hour are not supported")
    if seconds % 60:
        raise ConfigError(f"bucket {text!r}: must be a whole number of minutes")
    return seconds


def _from_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        default = Path("hourglass.toml")
        if not default.exists():
            return {}
        path = default
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    section = data.get("hourglass", data)
    return {k.replace("-", "_"): v for k, v in section.items()}


def _from_env() -> dict[str, Any]:
    names = set(Settings.__struct_fields__)
    out: dict[str, Any] = {}
    for key, value in os.environ.items():
        if key.startswith("HOURGLASS_") and not key.startswith("HOURGLASS__"):
            name = key.removeprefix("HOURGLASS_").lower()
            if name in names:
                out[name] = value
    return out


def load_settings(flags: dict[str, Any] | None = None, *, config: str | None = None) -> Settings:
    """Merge toml < environment < flags (flags that are ``None`` were not given)."""
    inherited = os.environ.get(SETTINGS_ENV)
    merged: dict[str, Any]
    if inherited:
        merged = msgspec.json.decode(inherited)
    else:
        config = config or os.environ.get("HOURGLASS_CONFIG")
        merged = _from_toml(Path(config) if config else None)
        merged.update(_from_env())
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"settings: {exc}") from exc
    return settings.validate()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process load exactly these settings."""
    return {SETTINGS_ENV: msgspec.json.encode(settings).decode()}
