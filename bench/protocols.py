"""What the analytics protocols cost the gateway, per event, against CloudEvents.

The gateway's work between a request's decompressed body and the events handed
to the group committer (no HTTP, no bus): for CloudEvents the validator alone,
the ceiling; for Segment and Snowplow their adapter (``gateway/segment.py``,
``gateway/snowplow.py``) and then the same validator.  The bodies are what the
SDKs send: 100 calls of segment-analytics-python's shape per batch, 10 events
of snowplow-tracker's per tp2 request (their default batch sizes), and the
same facts as CloudEvents of a schema with the same columns.  CPU per event,
the median of ``--runs``; the ratio to CloudEvents is the figure to compare
across machines.

    python bench/protocols.py [--events 200000] [--runs 5]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable

from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.gateway.adapt import merge
from hourglass.gateway.segment import SegmentApi
from hourglass.gateway.snowplow import SnowplowApi
from hourglass.gateway.validate import Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.schemas import load_registry

SETTINGS = Settings(segment=True, snowplow=True)
TYPES = EventTypes(load_registry(SETTINGS))
VALIDATOR = Validator(TYPES, Limits(256 * 1024, 10_000))
NOW = dt.datetime.now(dt.UTC)


def _segment_call(i: int) -> dict[str, object]:
    return {
        "type": "track",
        "messageId": str(uuid.uuid4()),
        "userId": f"user-{i % 1000}",
        "anonymousId": None,
        "event": "Song Skipped",
        "properties": {"track_id": f"t-{i}", "position_ms": i % 300_000, "shuffle": True},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "integrations": {},
        "timestamp": "2026-12-03T14:29:38.740+00:00",
    }


def _snowplow_event(i: int) -> dict[str, str]:
    contexts = {"schema": "iglu:x/contexts/jsonschema/1-0-1", "data": [{"a": i}]}
    return {
        "e": "se",
        "eid": str(uuid.uuid4()),
        "aid": "shop",
        "p": "pc",
        "tv": "py-1.1.0",
        "tna": "ns",
        "dtm": "1796308219506",
        "stm": "1796308220000",
        "se_ca": "player",
        "se_ac": "skip",
        "se_la": f"t-{i}",
        "se_va": "1.5",
        "cx": base64.urlsafe_b64encode(json.dumps(contexts).encode()).decode(),
    }


def _cloudevent(call: dict[str, object]) -> dict[str, object]:
    """The same facts as a CloudEvent of segment.tracks (JSON text columns and all)."""
    data = {
        "messageId": call["messageId"],
        "userId": call["userId"],
        "anonymousId": None,
        "event": call["event"],
        "properties": json.dumps(call["properties"]),
        "timestamp": call["timestamp"],
        "receivedAt": NOW.isoformat(),
        "context": json.dumps(call["context"]),
        "integrations": "{}",
    }
    return {
        "specversion": "1.0",
        "id": call["messageId"],
        "source": "website",
        "type": "segment.tracks",
        "time": call["timestamp"],
        "data": data,
    }


def _segment(bodies: list[bytes]) -> Callable[[], int]:
    api = SegmentApi(TYPES, SETTINGS)

    def run() -> int:
        n = 0
        for body in bodies:
            converted = api.convert(api.parse(body, None), "website", NOW)
            checked = merge(converted, VALIDATOR.check(Payload(Mode.BATCH, converted.events), NOW))
            n += checked.count - len(checked.rejected)
        return n

    return run


def _snowplow(bodies: list[bytes]) -> Callable[[], int]:
    api = SnowplowApi(256 * 1024)

    def run() -> int:
        n = 0
        for body in bodies:
            converted = api.convert(api.parse_post(body), "python-requests/2.34.2", NOW)
            checked = merge(converted, VALIDATOR.check(Payload(Mode.BATCH, converted.events), NOW))
            n += checked.count - len(checked.rejected)
        return n

    return run


def _cloudevents(bodies: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for body in bodies:
            checked = VALIDATOR.check(Payload(Mode.BATCH, body), NOW)
            n += checked.count - len(checked.rejected)
        return n

    return run


def _measure(run: Callable[[], int], events: int, runs: int) -> float:
    """Median CPU µs per event."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        assert run() == events, "every event must be accepted"
        times.append((time.process_time() - start) / events * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = args.events - args.events % 100
    calls = [_segment_call(i) for i in range(n)]
    segment = [
        json.dumps({"batch": calls[i : i + 100], "sentAt": NOW.isoformat()}).encode()
        for i in range(0, n, 100)
    ]
    cloudevents = [
        json.dumps([_cloudevent(c) for c in calls[i : i + 100]]).encode() for i in range(0, n, 100)
    ]
    schema = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    snowplow = [
        json.dumps(
            {"schema": schema, "data": [_snowplow_event(j) for j in range(i, i + 10)]}
        ).encode()
        for i in range(0, n, 10)
    ]
    ceiling = _measure(_cloudevents(cloudevents), n, args.runs)
    print(f"{n} events, median of {args.runs} runs, CPU µs per event (body to events)")
    print(f"  CloudEvents, 100 per request (the ceiling): {ceiling:6.2f}")
    for name, run in (
        ("Segment /v1/batch, 100 calls", _segment(segment)),
        ("Snowplow tp2, 10 events", _snowplow(snowplow)),
    ):
        cost = _measure(run, n, args.runs)
        print(f"  {name:42s} {cost:6.2f}  ({cost / ceiling:.1f}x CloudEvents)")


if __name__ == "__main__":
    main()
