"""A stream's budget holds what the loader has not committed: real nats-server,
gateway and loader processes, the lake read back with pyarrow.

* While the loader keeps up, a budget of a few MiB carries twenty times its size
  and every request gets 200: committed events leave the bus.
* With the loader stopped, the budget fills with unconsumed events only (the
  gateway purged the committed ones) and the gateway answers 503 with
  Retry-After; the loader back, the same gateway answers 200 again, and every
  acknowledged event is in the lake once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hourglass.bus.embedded import free_port
from hourglass.bus.jetstream import stream_name
from hourglass.bus.retention import ack_floor
from hourglass.config import MiB
from hourglass.status import gather_status
from tests.chaos.conftest import (
    SKIPPED,
    Key,
    assert_exactly_once,
    keys_of_events,
    lake_keys,
    wait_until,
)
from tests.groups import TIMING
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import BATCH, NatsServer, checkpoint_of, skipped

pytestmark = pytest.mark.timeout(240)

STREAM = stream_name(SKIPPED)
PAD = "t" * 1800  # ~2 KB events: many bytes for few events
FAST: dict[str, Any] = {"flush_interval_s": 0.2, "marker_interval_s": 0.5, "bucket": "1m"}


def big() -> dict[str, Any]:
    event = skipped()
    event["data"]["track_id"] = PAD
    return event


def stream_state(url: str) -> tuple[int, int, int, int]:
    """(bytes, first_seq, last_seq, loader's ack floor) of the test's stream."""

    async def run() -> tuple[int, int, int, int]:
        nc = await nats.connect(url)
        try:
            # A probe, not the system under test: on a loaded 2-core machine the
            # server's API may answer after the default 5 s (a CI run did).
            js = nc.jetstream(timeout=20)
            state = (await js.stream_info(STREAM)).state
            floor = await ack_floor(js, STREAM)
            floor = -1 if floor is None else floor
            return int(state.bytes), int(state.first_seq), int(state.last_seq), floor
        finally:
            await nc.close()

    return asyncio.run(run())


class Paced:
    """Posts batches of ``big`` events at about ``rate`` bytes/s of JSON."""

    def __init__(self, base: str, *, batch: int = 100) -> None:
        self.client = httpx.Client(base_url=base, timeout=30)
        self.batch = batch
        self.acked: list[Key] = []
        self.maybe: list[Key] = []
        self.sent_bytes = 0

    def post(self) -> httpx.Response:
        events = [big() for _ in range(self.batch)]
        body = msgspec.json.encode(events)
        r = self.client.post("/v1/events", content=body, headers=BATCH)
        self.sent_bytes += len(body)
        if r.status_code == 200:
            assert r.json()["rejected"] == []
            self.acked.extend(keys_of_events(events))
        else:
            self.maybe.extend(keys_of_events(events))
        return r

    def keep_pace(self, rate: float, since: float, sent_before: int = 0) -> None:
        """Sleep until the bytes sent after ``sent_before`` match ``rate`` since ``since``."""
        lead = (self.sent_bytes - sent_before) / rate - (time.monotonic() - since)
        if lead > 0:
            time.sleep(lead)

    def close(self) -> None:
        self.client.close()


@TIMING
def test_a_small_budget_carries_ten_times_its_size_while_the_loader_keeps_up(
    start_gateway: StartGateway, start_loader: StartLoader, nats_server: NatsServer
) -> None:
    budget = 4 * MiB
    gw = start_gateway(stream_max_bytes=budget, **FAST)
    metrics_port = free_port()
    loader = start_loader(stream_max_bytes=budget, loader_metrics_port=metrics_port, **FAST)
    sender = Paced(gw.base)
    # The budget lasts 2 s at this rate: ~6x the loader's usual lag behind the
    # gateway (0.2 s flushes), ~1.5x the worst seen on this 2-core machine.
    rate = 2 * MiB
    started = time.monotonic()
    statuses: list[int] = []
    highest = 0
    try:
        while sender.sent_bytes < 10 * budget:
            statuses.append(sender.post().status_code)
            sender.keep_pace(rate, started)
            if len(statuses) % 25 == 0:
                highest = max(highest, stream_state(nats_server.url)[0])
        # The loader's own round (every 5 s) purges only what lies beyond the replay
        # share, half the budget; the gateway's purges (down to the ack floor, once
        # the stream is full) may have left it nothing (a CI run: no round over the
        # share).  Go on at a quarter of the rate, which keeps the stream over half
        # the budget for ~4 s of every 8, until a round finds it there.
        slow_at, slow_from = time.monotonic(), sender.sent_bytes
        while time.monotonic() - slow_at < 40:
            if _stream_metrics(metrics_port).get("purged", 0) > 0:
                break
            statuses.append(sender.post().status_code)
            sender.keep_pace(rate / 4, slow_at, slow_from)
    finally:
        sender.close()
    refused = [s for s in statuses if s != 200]
    assert not refused, f"{len(refused)} of {len(statuses)} requests refused: {set(refused)}"

    wait_until(
        lambda: len(lake_keys(loader.lake, SKIPPED)) >= len(sender.acked), 60, "all in the lake"
    )
    assert_exactly_once(lake_keys(loader.lake, SKIPPED), sender.acked)
    size, first, last, floor = stream_state(nats_server.url)
    assert first > 1, "committed events were never purged"
    assert max(highest, size) <= budget
    assert floor <= checkpoint_of(nats_server.url, SKIPPED).committed_seq

    # The same on the loader's /metrics.
    assert _stream_metrics(metrics_port).get("purged", 0) > 0, "no loader round ever purged"
    seen = _stream_metrics(metrics_port)
    assert seen["budget"] == budget
    assert 0 < seen["bytes"] <= budget
    assert seen["unconsumed"] <= seen["bytes"]
    assert seen["oldest_age"] < 60


def _stream_metrics(port: int) -> dict[str, float]:
    """The ``hourglass_stream_*`` samples of the test's stream, by short name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    names = {
        "hourglass_stream_bytes": "bytes",
        "hourglass_stream_budget_bytes": "budget",
        "hourglass_stream_unconsumed_bytes": "unconsumed",
        "hourglass_stream_oldest_age_seconds": "oldest_age",
        "hourglass_stream_purged_messages_total": "purged",
    }
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and sample.labels.get("stream") == SKIPPED:
                out[names[sample.name]] = sample.value
    return out


def test_a_stopped_loader_fills_the_budget_with_unconsumed_events_only_then_recovers(
    start_gateway: StartGateway,
    start_loader: StartLoader,
    nats_server: NatsServer,
) -> None:
    budget = 2 * MiB
    gw = start_gateway(stream_max_bytes=budget, **FAST)
    loader = start_loader(stream_max_bytes=budget, **FAST)
    sender = Paced(gw.base, batch=50)
    try:
        while sender.sent_bytes < budget / 2:  # half a budget, committed: the replay
            assert sender.post().status_code == 200
        wait_until(
            lambda: len(lake_keys(loader.lake, SKIPPED)) >= len(sender.acked), 30, "committed"
        )
        loader.stop()
        committed = checkpoint_of(nats_server.url, SKIPPED).committed_seq
        assert committed > 0

        refused = None
        for _ in range(400):
            r = sender.post()
            if r.status_code != 200:
                refused = r
                break
        assert refused is not None, "the budget never filled"
        assert refused.status_code == 503, refused.text
        assert "full" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
        size, first, last, floor = stream_state(nats_server.url)
        # The loader's durable consumer outlives it: its ack floor (never past the
        # checkpoint) is what the gateway purged up to.  Left: what the stop-time
        # flush committed without acknowledging, a flush's worth at most.
        assert 0 < floor <= committed
        assert first >= floor + 1, f"consumed events still kept: first {first}, floor {floor}"
        mean = size / (last - first + 1)
        assert (committed + 1 - first) * mean < budget / 4, (first, committed, mean)
        assert size > budget / 2

        # What an operator sees: the budget, nearly all of it unconsumed.
        report = asyncio.run(gather_status(loader.settings))
        row = next(
            line for line in report.splitlines() if line.startswith(SKIPPED + " ") and "MiB" in line
        )
        assert row.split()[1:3] == ["2.0", "MiB"], report
        unconsumed = float(row.split()[3])
        assert 1.0 < unconsumed <= 2.0, report
        # The stopped loader gave its leases up and left: nobody loads the streams.
        assert "loaders: none live" in report, report

        start_loader(stream_max_bytes=budget, **FAST)
        deadline = time.monotonic() + 60
        while sender.post().status_code != 200:
            assert time.monotonic() < deadline, "the gateway never accepted again"
            time.sleep(0.2)
        for _ in range(5):
            assert sender.post().status_code == 200
    finally:
        sender.close()
    wait_until(
        lambda: len(lake_keys(loader.lake, SKIPPED)) >= len(sender.acked), 60, "all in the lake"
    )
    assert_exactly_once(lake_keys(loader.lake, SKIPPED), sender.acked, maybe=sender.maybe)
