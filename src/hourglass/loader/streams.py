"""The streams one loader loads: one per event type (or per partition of a
partitioned type, ``bus/jetstream.py``), and the failed-events stream; and the
checks, at start, that refuse a bus or lake laid out for other settings."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from hourglass.bus import jetstream
from hourglass.bus.ownership import Ownership, read_record
from hourglass.config import Settings, bucket_seconds
from hourglass.durable import TMP_PREFIX
from hourglass.exceptions import ConfigError
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.failed import FAILED_DIR, FailedFormat
from hourglass.lake.layout import Partition, check_layout
from hourglass.lake.store import Store, lake_store
from hourglass.loader import close
from hourglass.loader.metrics import LakeSpace, LoaderMetrics, StreamMetrics, is_disk_full
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
    # In metrics, logs and the loader's record: the type, or ``<type>/<p>`` for
    # partition p of a partitioned type.
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name


def build_streams(
    settings: Settings, metrics: LoaderMetrics, store: Store | None = None
) -> list[Stream]:
    """One :class:`Stream` per event type, and one for the failed-events stream,
    writing to ``store`` (the settings' lake if not given)."""
    store = store or lake_store(settings)
    registry = load_registry(settings)
    width = bucket_seconds(settings.bucket)
    lake = settings.lake_path
    counts = jetstream.partition_counts(settings, registry.type_names)
    # Budgets are shared by streams: a loader may come to own every partition.
    shares = max(1, sum(counts.values()))
    memory, disk = dedup_budgets(settings, shares)
    pending = pending_share(settings.loader_memory_bytes, shares)
    streams = []
    for schema in registry:
        fmt: RowFormat = LakeSchema(schema)
        name = schema.type_name
        count = counts[name]
        for index in jetstream.partitions(count):
            partition = Partition(index, count)
            label = name if index is None else f"{name}/{index}"
            stream = jetstream.stream_name(name, index)
            streams.append(
                Stream(
                    name,
                    stream,
                    jetstream.subject(name, index),
                    StreamLoader(
                        name,
                        fmt,
                        lake=lake,
                        checkpoints=Unclaimed(),
                        quarantine=settings.quarantine_path(name if index is None else stream),
                        quarantine_max_bytes=settings.quarantine_max_bytes,
                        width_s=width,
                        window_s=settings.dedup_window_of(name),
                        dedup_memory_bytes=memory,
                        dedup_disk_bytes=disk,
                        dedup_run_keys=settings.dedup_run_keys or None,
                        observer=StreamMetrics(metrics, label),
                        partition=partition,
                        store=store,
                    ),
                    # Partitioned types came after the file checkpoints: none to import.
                    settings.checkpoint_path(name if index is None else stream),
                    pending,
                    label,
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
                store=store,
            ),
            settings.checkpoint_path(FAILED_DIR),
            pending,
        )
    )
    return streams


async def open_lake(settings: Settings, space: LakeSpace) -> Store:
    """The settings' lake, its bucket width checked (``layout.check_layout``),
    once there is room on a full disk to record it."""
    store = lake_store(settings)
    while True:
        try:
            check_layout(settings, store)
            break
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            await space.wait("_layout", "layout", exc)
    space.wrote("_layout", "layout")
    return store


def dedup_budgets(settings: Settings, types: int) -> tuple[int, int]:
    """Each type's share of the dedup memory and disk budgets (``config.py``)."""
    disk = settings.dedup_disk_bytes
    if not disk:
        lake = settings.lake_path
        lake.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(lake).free // 4
    return dedup_share(settings.loader_memory_bytes, types), disk // types


async def check_partitions(
    js: JetStreamContext, settings: Settings, streams: list[Stream], store: Store
) -> None:
    """Refuse, before any stream loads (not a loop of failing restarts), partitions
    other than those a type's streams or its lake folder have (``bus/jetstream.py``,
    ``loader/close.py``): no waiting for streams no gateway will create.  Their
    manifests are created once: by a hard link, or on S3 a conditional PUT; a
    lake that cannot is refused here rather than at every close."""
    counts = {s.name: s.loader.partition.count for s in streams if s.name != FAILED_DIR}
    for name, count in counts.items():
        close.check_partitions(store, name, count)
    if any(n > 1 for n in counts.values()):
        if settings.lake_remote:
            from hourglass.lake.s3 import check_conditional  # obstore: the s3 extra's

            await asyncio.to_thread(check_conditional, store)
        else:
            check_hard_links(settings.lake_path)
    jetstream.check_layout(await jetstream.stream_names(js), counts)


def check_hard_links(lake: Path) -> None:
    """A partitioned type's manifest is created once by a hard link (``close.seal``):
    refuse a lake whose file system cannot make one, rather than fail every close."""
    lake.mkdir(parents=True, exist_ok=True)
    probe = lake / f"{TMP_PREFIX}link-probe-{os.getpid()}"
    linked = probe.with_name(probe.name + ".linked")
    try:
        probe.write_bytes(b"")
        os.link(probe, linked)
    except OSError as exc:
        raise ConfigError(
            f"the lake {lake} is on a file system without hard links ({exc.strerror}): "
            "partitioned types need them to close buckets (docs/deploy.md)"
        ) from exc
    finally:
        linked.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)


async def check_lake(ownership: Ownership, settings: Settings, streams: list[Stream]) -> None:
    """Refuse to start as the standby of a loader that writes to another lake: it
    would take over into a lake of its own, splitting every stream in two."""
    lake = settings.lake_id
    for s in streams:
        record, _ = await read_record(ownership.js, s.stream, ownership.records)
        if record is not None and record.lake != lake:
            raise ConfigError(
                f"stream {s.stream} is loaded into {record.lake} (by {record.owner}), "
                f"this loader writes to {lake}: every loader of a bus must share its lake "
                "(the same data_dir, on a filesystem they all mount)"
            )


CLOCK_SKEW_S = 5.0  # between a gateway's clock (received_at) and the bus's


async def first_bucket_hint(js: JetStreamContext, settings: Settings, s: Stream) -> None:
    """A partition that has not started closing: the earliest bucket any event of
    its type's partitions can be in, so that the bucket the partitions agree on
    (``close.agree_first``) is not after another partition's backlog (whose rows
    would all be counted as skewed into it).  An event was stamped at most a
    publish timeout (and the clocks' skew) before the bus stored it."""
    loader = s.loader
    partition = loader.partition
    if partition.index is None or loader.state.next_close is not None:
        return
    streams = [jetstream.stream_name(s.name, p) for p in range(partition.count)]
    first = await jetstream.first_stored(js, streams)
    if first is not None:
        earliest = int(first - settings.publish_timeout_s - CLOCK_SKEW_S)
        loader.first_hint = earliest - earliest % loader.width
