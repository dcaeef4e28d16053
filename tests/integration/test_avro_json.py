"""Avro JSON events written by fastavro land in the lake with typed columns.

Real nats-server, gateway and loader (minute buckets); a few hundred events of two
bundled types, most as fastavro's ``json_writer`` encodes them (timestamps as epoch
integers, dates as day counts), some as RFC 3339, mixed in batches and sent alone;
the lake is read back with DuckDB once the events are in it. The expected values
come from ``tests/avro_records.py``, which reads the ``.avsc`` without hourglass's
parser. (Closing buckets is not this test's concern, and waiting for it would cost
up to a minute.)
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import pytest

from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry
from tests.avro_records import (
    EPOCH,
    avro_json,
    expected,
    for_gateway,
    from_lake,
    resolve,
    rfc3339,
)
from tests.chaos.conftest import duck_glob, relisting, wait_until
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import post

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 3.0,
    "flush_interval_s": 0.5,
}
REGISTRY = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
AD, STARTED = "music.AdImpression", "music.PlaybackStarted"
STRUCTURED = {"content-type": "application/cloudevents+json"}
ENVELOPE_TYPES = ["VARCHAR"] * 3 + ["TIMESTAMP WITH TIME ZONE"] * 2
COLUMN_TYPES = {
    AD: {
        "user_id": "VARCHAR",
        "ad_id": "VARCHAR",
        "shown_at": "TIMESTAMP WITH TIME ZONE",
        "campaign_day": "DATE",
        "duration_ms": "INTEGER",
        "price_micros": "BIGINT",
        "tracking_token": "BLOB",
        "clicked": "BOOLEAN",
    },
    STARTED: {
        "user_id": "VARCHAR",
        "track_id": "VARCHAR",
        "started_at": "TIMESTAMP WITH TIME ZONE",
        "position_ms": "BIGINT",
        "device": "STRUCT(platform VARCHAR, app_version VARCHAR)",
        "shuffle": "BOOLEAN",
        "context_uri": "VARCHAR",
    },
}
_FIRST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LAST = dt.datetime.max.replace(tzinfo=dt.UTC)
EDGE_INSTANTS = [_FIRST, _LAST, EPOCH - dt.timedelta(microseconds=1), EPOCH]
EDGE_DAYS = [dt.date.min, dt.date.max, dt.date(1969, 12, 31)]


def _instant(rng: random.Random, i: int) -> dt.datetime:
    if i < len(EDGE_INSTANTS):
        return EDGE_INSTANTS[i]
    offset = dt.timezone(dt.timedelta(minutes=rng.choice([0, 120, -330])))
    span = (_LAST - _FIRST) // dt.timedelta(microseconds=1) - 2 * 86_400_000_000
    moment = _FIRST + dt.timedelta(days=1, microseconds=rng.randrange(span))
    return moment.astimezone(offset)


def _ad(rng: random.Random, i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "user_id": uuid.UUID(int=rng.getrandbits(128)),
        "ad_id": f"ad-{i}",
        "shown_at": _instant(rng, i),
        "campaign_day": EDGE_DAYS[i]
        if i < len(EDGE_DAYS)
        else dt.date.fromordinal(rng.randint(1, dt.date.max.toordinal())),
        "duration_ms": rng.randint(-(2**31), 2**31 - 1),
        "price_micros": rng.randint(-(2**63), 2**63 - 1),
        "tracking_token": rng.randbytes(rng.randint(0, 12)),
    }
    if i % 3:
        record["clicked"] = bool(i % 2)
    return record


def _started(rng: random.Random, i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "user_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "track_id": f"track-{i}",
        "started_at": _instant(rng, i),
        "device": {
            "platform": rng.choice(["IOS", "ANDROID", "WEB", "DESKTOP"]),
            "app_version": "9",
        },
    }
    if i % 2:
        record |= {"position_ms": rng.randint(0, 2**40), "shuffle": True}
    if i % 3:
        record["context_uri"] = None if i % 5 == 0 else f"playlist:{i}"
    return record


def _events(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Events of both types, four in five as fastavro's Avro JSON; the expected data
    by event id."""
    events, wants = [], {}
    for type_name, make, n in [(AD, _ad, 200), (STARTED, _started, 150)]:
        avsc = REGISTRY[type_name].avro
        node, parsed = resolve(avsc), fastavro.parse_schema(avsc)
        records = [make(rng, i) for i in range(n)]
        for record in records:
            assert fastavro.validation.validate(record, parsed)
        for i, (record, sent) in enumerate(zip(records, avro_json(parsed, records), strict=True)):
            event_id = f"{type_name}-{i}"
            wants[event_id] = want = expected(node, record)
            data = rfc3339(node, want) if i % 5 == 4 else for_gateway(node, sent)
            events.append(
                {
                    "specversion": "1.0",
                    "id": event_id,
                    "source": "/avro",
                    "type": type_name,
                    "data": data,
                }
            )
    return events, wants


def _read(lake: Path, type_name: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Column types and rows of a type, as DuckDB reads the hive-partitioned lake."""

    def read() -> tuple[dict[str, str], list[dict[str, Any]]]:
        with duckdb.connect() as con:
            con.sql("SET TimeZone = 'UTC'")
            rel = con.sql(f"select * from {duck_glob(lake, type_name)}")  # noqa: S608 - test path
            types = dict(zip(rel.columns, map(str, rel.types), strict=True))
            return types, [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]

    return relisting(read)


def _check_lake(lake: Path, type_name: str, ids: list[str], wants: dict[str, Any]) -> None:
    """Typed columns, every event once with its values."""
    node = resolve(REGISTRY[type_name].avro)
    types, rows = _read(lake, type_name)
    assert list(types.values())[:5] == ENVELOPE_TYPES
    assert {f.name: types[f.name] for f in node.fields} == COLUMN_TYPES[type_name]
    counts = Counter(row["id"] for row in rows)
    assert sorted(counts) == ids and set(counts.values()) == {1}, type_name
    for row in rows:
        got = from_lake(node, {f.name: row[f.name] for f in node.fields})
        assert got == wants[row["id"]], row["id"]


def test_avro_json_events_land_with_typed_columns(
    start_gateway: StartGateway, start_loader: StartLoader, tmp_path: Path
) -> None:
    gw = start_gateway(**FAST)
    start_loader(**FAST)
    lake = tmp_path / "data" / "lake"
    events, wants = _events(random.Random(2026))
    random.Random(7).shuffle(events)
    alone, batched = events[:10], events[10:]
    for first in range(0, len(batched), 50):
        chunk = batched[first : first + 50]
        response = post(gw.base, chunk)
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": len(chunk), "rejected": []}
    for event in alone:
        response = post(gw.base, event, headers=STRUCTURED)
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 1, "rejected": []}

    by_type = {t: sorted(i for i in wants if i.startswith(t + "-")) for t in (AD, STARTED)}
    for type_name, ids in by_type.items():
        wait_until(lambda t=type_name, i=ids: len(_read(lake, t)[1]) >= len(i), 20, type_name)
    for type_name, ids in by_type.items():
        _check_lake(lake, type_name, ids, wants)
