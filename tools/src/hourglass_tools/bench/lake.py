"""What the lake says after a run: rows, send-to-lake latency, bucket close delays.

A row's send-to-lake latency is its Parquet file's mtime minus the row's
``sent_us`` (the client's scheduled send time, carried in the event).  The
loader writes a file, fsyncs it and renames it into place, so the mtime is the
end of the write, a few milliseconds before the file is visible.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hourglass.lake.layout import SUCCESS
from hourglass_tools.bench.hist import Histogram


@dataclass
class LakeResult:
    rows: int = 0  # every bench row in the lake
    files: int = 0
    rows_in_window: int = 0
    latency: Histogram = field(default_factory=Histogram)  # µs, rows sent in the window
    closes: list[dict[str, Any]] = field(default_factory=list)  # from _SUCCESS.json
    read_s: float = 0.0

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


def analyze(lake: Path, types: list[str], window: tuple[float, float]) -> LakeResult:
    import numpy as np
    import pyarrow.parquet as pq

    started = time.monotonic()
    result = LakeResult()
    low, high = int(window[0] * 1e6), int(window[1] * 1e6)
    for type_name in types:
        for path in sorted((lake / type_name).rglob("part-*.parquet")):
            mtime_us = path.stat().st_mtime_ns // 1000
            sent = pq.read_table(path, columns=["sent_us"]).column("sent_us")
            values = sent.to_numpy()
            result.files += 1
            result.rows += int(values.size)
            inside = values[(values >= low) & (values < high)]
            result.rows_in_window += int(inside.size)
            result.latency.record_many(mtime_us - inside.astype(np.int64))
    result.closes = read_closes(lake, types)
    result.read_s = time.monotonic() - started
    return result


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
