"""What the lake says after a run: rows, send-to-lake latency, bucket close delays,
and which acknowledged events are missing or there twice.

A row's send-to-lake latency is its Parquet file's mtime minus the row's
``sent_us`` (the client's scheduled send time, carried in the event).  The
loader writes a file, fsyncs it and renames it into place, so the mtime is the
end of the write, a few milliseconds before the file is visible.  The files that
count are the ones the rows first became visible in: a closed bucket's part
files are merged into new ones (``loader/compact.py``) that carry the newest
merged file's mtime, so timing rows by the files found after the run would say
every row landed at its bucket's last flush (a p99 of about the bucket width).
:class:`LakeFollower` reads each part file as it appears, during the run.

Every bench id is ``<request:012d>-<index:05d>`` (``workload.py``), so a row's
id is the integer ``request * 100,000 + index``: the ids of the whole run are
one sorted int64 array (8 bytes a row: 3.6 GB for 450 M rows), which says how
many rows are a second copy (``twice``), and per request how many distinct ids
landed, to compare with what the load generator saw acknowledged
(``missing``: an acknowledged event not in the lake; ``unacked``: rows of
requests never answered 200, e.g. one refused with 503 after the bus had its
events).  Counting rows alone, as before, lets duplicates hide missing rows.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hourglass.lake.layout import SUCCESS, part_range
from hourglass_tools.bench.hist import Histogram


@dataclass
class LakeResult:
    rows: int = 0  # every bench row in the lake
    files: int = 0
    rows_in_window: int = 0
    latency: Histogram = field(default_factory=Histogram)  # µs, rows sent in the window
    closes: list[dict[str, Any]] = field(default_factory=list)  # from _SUCCESS.json
    read_s: float = 0.0
    distinct: int = 0  # distinct ids
    twice: int = 0  # rows beyond the first of their id
    missing: int = 0  # acknowledged events whose id is not in the lake
    unacked: int = 0  # distinct ids of requests never acknowledged
    ids_checked: bool = False  # False: some id not of the bench's form (counts only)
    rows_timed: int = 0  # rows sent in the window whose first file the follower read

    def close_delays(self, window: tuple[float, float] | None = None) -> list[float]:
        """close_delay_s of buckets with events that end after ``window`` starts."""
        out = []
        for c in self.closes:
            if window is not None and c["bucket_end_ts"] <= window[0]:
                continue
            if c["count"] > 0:
                out.append(float(c["close_delay_s"]))
        return out


def _timestamp(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_closes(lake: Path, types: list[str]) -> list[dict[str, Any]]:
    out = []
    for type_name in types:
        for path in sorted((lake / type_name).rglob(SUCCESS)):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.append(
                {
                    "type": type_name,
                    "bucket_start": data.get("bucket_start"),
                    "bucket_end_ts": _timestamp(str(data.get("bucket_end"))),
                    "count": int(data.get("count", 0)),
                    "duplicates_dropped": int(data.get("duplicates_dropped", 0)),
                    "skewed": int(data.get("skewed", 0)),
                    "close_delay_s": float(data.get("close_delay_s", 0.0)),
                }
            )
    return out


ID_BYTES = 18  # <request:012d>-<index:05d>
PER_REQUEST = 100_000


def id_numbers(ids: Any) -> Any:
    """``request * 100,000 + index`` of each bench id (pyarrow strings), or None if
    some id is not of that form."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if ids.null_count:
        return None
    if len(ids) and not pc.all(pc.equal(pc.utf8_length(ids), ID_BYTES)).as_py():
        return None
    if len(ids) and not pc.all(pc.equal(pc.utf8_slice_codeunits(ids, 12, 13), "-")).as_py():
        return None
    try:
        request = pc.cast(pc.utf8_slice_codeunits(ids, 0, 12), pa.int64())
        index = pc.cast(pc.utf8_slice_codeunits(ids, 13, ID_BYTES), pa.int64())
    except pa.ArrowInvalid:  # not digits
        return None
    numbers = pc.add(pc.multiply(request, PER_REQUEST), index)
    if isinstance(numbers, pa.ChunkedArray):
        numbers = numbers.combine_chunks()
    return numbers.to_numpy()


class LakeFollower(threading.Thread):
    """Reads the ``sent_us`` of each part file within ``interval_s`` of its rename
    into place, and keeps the latencies by the second they were sent.

    A merged file is told from a flush's by its name: it covers the sequence range
    of files already seen in its folder.  A flush's file merged before the next
    look (the last flush before a close, at worst) is never read: its rows are
    missing from ``rows_timed``, which the report prints beside the rows.
    """

    def __init__(self, lake: Path, types: list[str], interval_s: float = 0.5) -> None:
        super().__init__(name="lake-follower", daemon=True)
        self.lake, self.types, self.interval_s = lake, types, interval_s
        self.by_second: defaultdict[int, Histogram] = defaultdict(Histogram)
        self.rows_by_second: defaultdict[int, int] = defaultdict(int)
        self._seen: defaultdict[Path, list[tuple[int, int]]] = defaultdict(list)
        self._read_already: set[Path] = set()  # one look is a set lookup per file
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.look()
            self._halt.wait(self.interval_s)
        self.look()

    def stop(self) -> None:
        self._halt.set()
        self.join(60)

    def look(self) -> None:
        for type_name in self.types:
            for path in sorted((self.lake / type_name).glob("date=*/**/part-*.parquet")):
                self._read(path)

    def _read(self, path: Path) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        if path in self._read_already:
            return
        span = part_range(path.name)
        seen = self._seen[path.parent]
        if span is None or any(span[0] <= a and b <= span[1] for a, b in seen):
            self._read_already.add(path)
            return  # merged from files seen
        try:
            mtime_us = path.stat().st_mtime_ns // 1000
            sent = pq.read_table(path, columns=["sent_us"]).column("sent_us").to_numpy()
        except (OSError, ValueError):
            return  # merged away meanwhile: not recorded, looked at again if still there
        seen.append(span)
        self._read_already.add(path)
        sent = sent.astype(np.int64)
        seconds = sent // 1_000_000
        for second in np.unique(seconds).tolist():
            inside = sent[seconds == second]
            self.by_second[second].record_many(mtime_us - inside)
            self.rows_by_second[second] += int(inside.size)

    def latency(self, window: tuple[float, float]) -> tuple[Histogram, int]:
        """Latencies (µs) and count of the rows sent in whole seconds of ``window``."""
        merged, rows = Histogram(), 0
        for second, hist in self.by_second.items():
            if window[0] <= second and second + 1 <= window[1]:
                merged.merge(hist)
                rows += self.rows_by_second[second]
        return merged, rows


def analyze(
    lake: Path,
    types: list[str],
    window: tuple[float, float],
    acked: dict[int, int] | None = None,
    follower: LakeFollower | None = None,
) -> LakeResult:
    """``acked``: events acknowledged per request number (``LoadResult``);
    ``follower``: the latencies as the files appeared (else by the files now)."""
    import numpy as np
    import pyarrow.parquet as pq

    started = time.monotonic()
    result = LakeResult()
    low, high = int(window[0] * 1e6), int(window[1] * 1e6)
    numbers: list[Any] = []
    checked = True
    for type_name in types:
        for path in sorted((lake / type_name).rglob("part-*.parquet")):
            mtime_us = path.stat().st_mtime_ns // 1000
            table = pq.read_table(path, columns=["sent_us", "id"] if checked else ["sent_us"])
            values = table.column("sent_us").to_numpy()
            result.files += 1
            result.rows += int(values.size)
            inside = values[(values >= low) & (values < high)]
            result.rows_in_window += int(inside.size)
            if follower is None:
                result.latency.record_many(mtime_us - inside.astype(np.int64))
            if checked:
                got = id_numbers(table.column("id"))
                checked = got is not None
                numbers.append(got)
    if checked:
        _check_ids(result, numbers, acked or {})
    if follower is not None:
        result.latency, result.rows_timed = follower.latency(window)
    result.closes = read_closes(lake, types)
    result.read_s = time.monotonic() - started
    return result


def _check_ids(result: LakeResult, numbers: list[Any], acked: dict[int, int]) -> None:
    import numpy as np

    every = np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64)
    numbers.clear()
    every.sort()
    distinct = every[np.r_[True, every[1:] != every[:-1]]] if len(every) else every
    del every
    result.ids_checked = True
    result.distinct = int(len(distinct))
    result.twice = result.rows - result.distinct
    requests, landed = np.unique(distinct // PER_REQUEST, return_counts=True)
    in_lake = dict(zip(requests.tolist(), landed.tolist(), strict=True))
    result.missing = sum(max(n - in_lake.get(r, 0), 0) for r, n in acked.items())
    result.unacked = sum(n for r, n in in_lake.items() if r not in acked)


def unclosed(lake: Path, types: list[str], last_event_ts: float, width_s: int) -> list[str]:
    """The bucket of ``last_event_ts`` of each type, if it has no ``_SUCCESS.json``
    yet (buckets of a type close in order, so the earlier ones are closed too)."""
    import datetime as dt

    from hourglass.lake.layout import bucket_dir

    start = dt.datetime.fromtimestamp(int(last_event_ts) - int(last_event_ts) % width_s, dt.UTC)
    missing = []
    for type_name in types:
        folder = bucket_dir(lake, type_name, start, width_s)
        if not (folder / SUCCESS).exists():
            missing.append(str(folder.relative_to(lake)))
    return missing
