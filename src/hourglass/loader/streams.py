"""The streams one loader loads: one per event type, and the failed-events stream."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hourglass.bus import jetstream
from hourglass.config import Settings, bucket_seconds
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.failed import FAILED_DIR, FailedFormat
from hourglass.loader.metrics import LoaderMetrics, StreamMetrics
from hourglass.loader.owner import Unclaimed
from hourglass.loader.stream import RowFormat, StreamLoader
from hourglass.schemas import load_registry


@dataclass
class Stream:
    name: str  # the lake folder: the type name, or _failed
    stream: str
    subject: str
    loader: StreamLoader
    legacy: Path  # the checkpoint file an earlier version kept, imported once
    warmed_at: float = -1e9  # monotonic time of the standby's last read of the lake


def build_streams(settings: Settings, metrics: LoaderMetrics) -> list[Stream]:
    """One :class:`Stream` per event type, and one for the failed-events stream."""
    registry = load_registry(settings)
    width = bucket_seconds(settings.bucket)
    lake = settings.lake_path
    streams = []
    for schema in registry:
        fmt: RowFormat = LakeSchema(schema)
        name = schema.type_name
        streams.append(
            Stream(
                name,
                jetstream.stream_name(name),
                jetstream.subject(name),
                StreamLoader(
                    name,
                    fmt,
                    lake=lake,
                    checkpoints=Unclaimed(),
                    quarantine=settings.quarantine_path(name),
                    quarantine_max_bytes=settings.quarantine_max_bytes,
                    width_s=width,
                    window_s=settings.dedup_window_s,
                    observer=StreamMetrics(metrics, name),
                ),
                settings.checkpoint_path(name),
            )
        )
    streams.append(
        Stream(
            FAILED_DIR,
            jetstream.FAILED_STREAM,
            jetstream.FAILED_SUBJECT + ".>",
            StreamLoader(
                FAILED_DIR,
                FailedFormat(),
                lake=lake,
                checkpoints=Unclaimed(),
                quarantine=settings.quarantine_path(FAILED_DIR),
                quarantine_max_bytes=settings.quarantine_max_bytes,
                width_s=width,
                window_s=0,
                closes=False,
                dedup=False,
                observer=StreamMetrics(metrics, FAILED_DIR),
            ),
            settings.checkpoint_path(FAILED_DIR),
        )
    )
    return streams
