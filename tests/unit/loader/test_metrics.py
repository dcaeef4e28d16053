"""The loader's reports reach Prometheus: a StreamLoader with StreamMetrics as observer."""

from __future__ import annotations

from pathlib import Path

from hourglass.lake.arrow import LakeSchema
from hourglass.loader.metrics import LoaderMetrics, StreamMetrics
from hourglass.loader.state import FileCheckpoints
from hourglass.loader.stream import StreamLoader

from .conftest import H0, SCHEMAS, SKIPPED, Harness, key, skipped

MIN = 60


def _sample(metrics: LoaderMetrics, name: str, stream: str | None = None) -> float:
    labels = {"stream": stream} if stream else {}
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_report_lands_in_the_stream_s_counters(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    metrics = LoaderMetrics()
    h.loader = StreamLoader(
        SKIPPED,
        LakeSchema(SCHEMAS[SKIPPED]),
        lake=h.lake,
        checkpoints=FileCheckpoints(h.state_path),
        quarantine=h.root / "quarantine",
        width_s=MIN,
        window_s=86400,
        clock=h.clock,
        observer=StreamMetrics(metrics, SKIPPED),
    )
    h.loader.recover()
    first = [skipped() for _ in range(3)]
    again = [skipped(first[0]["source"], first[0]["id"])]
    h.load(h.rows(first, H0 + 1), h.rows(again, H0 + 2), h.raw(b"not json\n"))
    h.load(h.marker("gw", H0 + MIN + 1))
    h.clock.now = H0 + MIN + 2
    [manifest] = h.loader.close_ready({"gw"}, caught_up=True)
    assert h.keys().count(key(first[0])) == 1

    assert _sample(metrics, "hourglass_loader_rows_written_total", SKIPPED) == 3
    assert _sample(metrics, "hourglass_loader_files_written_total", SKIPPED) == 1
    assert _sample(metrics, "hourglass_loader_duplicates_dropped_total", SKIPPED) == 1
    assert _sample(metrics, "hourglass_loader_messages_quarantined_total", SKIPPED) == 1
    assert _sample(metrics, "hourglass_loader_buckets_closed_total", SKIPPED) == 1
    assert _sample(metrics, "hourglass_loader_close_delay_seconds_count") == 1
    assert manifest.count == 3
    # The loader's own tallies saw the same, and a fresh loader keeps the observer.
    assert (h.loader.stats.rows_written, h.loader.stats.duplicates) == (3, 1)
    assert h.loader.fresh().observer is h.loader.observer
