"""The streams one loader loads: one per event type, and the failed-events stream."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hourglass.bus import jetstream
from hourglass.config import Settings, bucket_seconds
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.failed import FAILED_DIR, FailedFormat
from hourglass.loader.metrics import LoaderMetrics, StreamMetrics
from hourglass.loader.owner import Unclaimed
from hourglass.loader.resources import dedup_share, pending_share
from hourglass.loader.stream import RowFormat, StreamLoader
from hourglass.schemas import load_registry


@dataclass
class Stream:
    name: str  # the lake folder: the type name, or _failed
    stream: str
    subject: str
    loader: StreamLoader
    legacy: Path  # the checkpoint file an earlier version kept, imported once
    pending_max_bytes: int  # unflushed rows past this: flush now (``resources.py``)


def build_streams(settings: Settings, metrics: LoaderMetrics) -> list[Stream]:
    """One :class:`Stream` per event type, and one for the failed-events stream."""
    registry = load_registry(settings)
    width = bucket_seconds(settings.bucket)
    lake = settings.lake_path
    types = max(1, len(list(registry)))
    memory, disk = dedup_budgets(settings, types)
    pending = pending_share(settings.loader_memory_bytes, types)
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
                    dedup_memory_bytes=memory,
                    dedup_disk_bytes=disk,
                    dedup_run_keys=settings.dedup_run_keys or None,
                    observer=StreamMetrics(metrics, name),
                ),
                settings.checkpoint_path(name),
                pending,
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
            pending,
        )
    )
    return streams


def dedup_budgets(settings: Settings, types: int) -> tuple[int, int]:
    """Each type's share of the dedup memory and disk budgets (``config.py``)."""
    disk = settings.dedup_disk_bytes
    if not disk:
        lake = settings.lake_path
        lake.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(lake).free // 4
    return dedup_share(settings.loader_memory_bytes, types), disk // types
