"""The end-of-run checks: what was promised is in the lake, once, and every
closed bucket is exactly what its manifest says.

Deliberately independent of the loader's own code: rows are read by DuckDB
(hive-partitioned, as a user reads them), row counts from the Parquet footers
by pyarrow, checksums by hashlib.  Only the manifest's *format* (the contract)
and the folder naming are shared, so a bug in how the loader counts or hashes
shows up here instead of agreeing with itself.

Checks:

* lost — a promised ``(source, id)`` not in the lake;
* duplicated — a ``(source, id)`` on more than one row;
* phantom — a lake row no producer could have sent (unknown source, or an id
  beyond what that producer ever reached);
* manifests — listed files = the folder's part files (nothing else but the
  manifest), rows, bytes and sha256 per file, ``count`` = sum of rows, bucket
  bounds match the folder, every row received before the bucket's end and the
  rows received before its start equal ``skewed``;
* temp files — no ``.tmp-*`` left anywhere under the data folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from hourglass.durable import TMP_PREFIX
from hourglass.lake.layout import COMPACTING, SUCCESS, bucket_dir, part_range
from hourglass.lake.manifest import Manifest

Key = tuple[str, str]  # (source, id)


@dataclass
class LakeRows:
    """Per key: how many rows, and the earliest ``received_at`` (unix seconds)."""

    counts: dict[Key, int] = field(default_factory=dict)
    received: dict[Key, float] = field(default_factory=dict)
    rows: int = 0


@dataclass
class Verdict:
    acknowledged: int = 0
    lake_rows: int = 0
    lost: list[tuple[Key, float]] = field(default_factory=list)  # with the time of the promise
    duplicated: list[tuple[Key, int, float]] = field(default_factory=list)  # count, received
    unacknowledged: int = 0  # delivered though never promised (killed before logging): fine
    phantom: list[Key] = field(default_factory=list)
    manifest_problems: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    buckets_closed: int = 0
    max_close_delay_s: float | None = None
    skewed: int = 0
    duplicates_dropped: int = 0
    rows_in_open_buckets: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.phantom
            or self.manifest_problems
            or self.temp_files
        )


def event_types(lake: Path) -> list[str]:
    """Every type folder holding at least one part file (``_failed`` excluded)."""
    if not lake.exists():
        return []
    return sorted(
        p.name
        for p in lake.iterdir()
        if p.is_dir() and not p.name.startswith("_") and any(p.rglob("part-*.parquet"))
    )


def read_lake(lake: Path) -> LakeRows:
    import duckdb

    out = LakeRows()
    with duckdb.connect() as con:
        for type_name in event_types(lake):
            glob = str(lake / type_name / "**" / "*.parquet").replace("'", "''")
            rows = con.sql(
                "select source, id, count(*), epoch_us(min(received_at)) "  # noqa: S608 - a path
                f"from read_parquet('{glob}', hive_partitioning=true) group by source, id"
            ).fetchall()
            for source, event_id, n, first_us in rows:
                key = (str(source), str(event_id))
                out.counts[key] = out.counts.get(key, 0) + int(n)
                out.received.setdefault(key, int(first_us) / 1e6)
                out.rows += int(n)
    return out


def compare(
    promised: dict[Key, float], lake: LakeRows, allowed: dict[str, int], verdict: Verdict
) -> None:
    """Fill lost / duplicated / phantom.  ``allowed[source]`` is the highest id
    number that source could have sent; ids are ``<name>-<number>``."""
    verdict.acknowledged = len(promised)
    verdict.lake_rows = lake.rows
    verdict.lost = sorted(
        ((k, at) for k, at in promised.items() if k not in lake.counts), key=lambda x: x[1]
    )
    verdict.duplicated = sorted(
        ((k, n, lake.received[k]) for k, n in lake.counts.items() if n > 1), key=lambda x: x[2]
    )
    for key in lake.counts:
        if key in promised:
            continue
        source, event_id = key
        number = event_id.rpartition("-")[2]
        if source in allowed and number.isdigit() and int(number) <= allowed[source]:
            verdict.unacknowledged += 1
        else:
            verdict.phantom.append(key)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_manifest(lake: Path, folder: Path, manifest: Manifest, width_s: int) -> list[str]:
    """Everything wrong with one closed bucket, as sentences."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    problems: list[str] = []
    where = str(folder.relative_to(lake))
    present = {p.name for p in folder.iterdir() if p.name != SUCCESS}
    listed = {f.name for f in manifest.files}
    if present != listed:
        problems.append(
            f"{where}: files not in the manifest {sorted(present - listed)}, "
            f"listed but missing {sorted(listed - present)}"
        )
    start, end = manifest.bucket_start, manifest.bucket_end
    if bucket_dir(lake, manifest.type, start, width_s) != folder:
        problems.append(f"{where}: bucket_start {start:%Y-%m-%dT%H:%M:%SZ} is another folder")
    if end - start != dt.timedelta(seconds=width_s):
        problems.append(f"{where}: bucket {start} .. {end} is not {width_s} s wide")
    if manifest.count != sum(f.rows for f in manifest.files):
        problems.append(f"{where}: count {manifest.count} != sum of file rows")
    early = 0
    for entry in manifest.files:
        path = folder / entry.name
        if not path.exists() or part_range(entry.name) is None:
            continue  # already reported as a file-set mismatch
        rows = pq.ParquetFile(path).metadata.num_rows
        size = path.stat().st_size
        digest = _sha256(path)
        if (rows, size, digest) != (entry.rows, entry.bytes, entry.sha256):
            problems.append(
                f"{where}/{entry.name}: manifest says rows={entry.rows} bytes={entry.bytes} "
                f"sha256={entry.sha256[:12]}, file has rows={rows} bytes={size} "
                f"sha256={digest[:12]}"
            )
        received = pq.read_table(path, columns=["received_at"]).column("received_at")
        if received.length() and pc.max(received).as_py() >= end:
            problems.append(f"{where}/{entry.name}: a row received at or after the bucket end")
        early += int(pc.sum(pc.less(received, pa.scalar(start, type=received.type))).as_py() or 0)
    if early != manifest.skewed:
        problems.append(
            f"{where}: {early} rows received before the bucket, skewed={manifest.skewed}"
        )
    return problems


def check_buckets(lake: Path, width_s: int, verdict: Verdict) -> None:
    for path in sorted(lake.rglob(SUCCESS)):
        folder = path.parent
        if folder.relative_to(lake).parts[0] == COMPACTING:
            continue  # a compaction's staging folder, not a bucket (loader/compact.py)
        try:
            manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            verdict.manifest_problems.append(f"{folder.relative_to(lake)}: unreadable: {exc}")
            continue
        verdict.buckets_closed += 1
        verdict.skewed += manifest.skewed
        verdict.duplicates_dropped += manifest.duplicates_dropped
        delay = manifest.close_delay_s
        if verdict.max_close_delay_s is None or delay > verdict.max_close_delay_s:
            verdict.max_close_delay_s = delay
        verdict.manifest_problems += check_manifest(lake, folder, manifest, width_s)
    import pyarrow.parquet as pq

    for type_name in event_types(lake):
        for part in (lake / type_name).rglob("part-*.parquet"):
            if not (part.parent / SUCCESS).exists():
                verdict.rows_in_open_buckets += pq.ParquetFile(part).metadata.num_rows


def temp_files(roots: Iterable[Path]) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in root.rglob(TMP_PREFIX + "*"))
