"""Every demo type, any valid data: what the loader writes reads back typed and equal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hourglass.schemas.parse import parse_schema as parse
from tests.strategies import valid_data
from tests.unit.loader.avro_check import check_arrow_type, parse_ts, same_value
from tests.unit.loader.conftest import H0, SCHEMAS, Harness


def _event(type_name: str, data: dict[str, Any], n: int, time: str | None) -> dict[str, Any]:
    out = {"specversion": "1.0", "id": f"id-{n}", "source": "/rows", "type": type_name}
    if time is not None:
        out["time"] = time
    out["data"] = data
    return out


@pytest.mark.parametrize("type_name", sorted(SCHEMAS))
def test_every_type_reads_back_typed_and_equal(type_name: str, tmp_path: Path) -> None:
    avsc = SCHEMAS[type_name].avro
    record = parse(avsc)
    times = st.none() | st.datetimes(
        min_value=dt.datetime(1970, 1, 2), timezones=st.just(dt.timezone(dt.timedelta(hours=2)))
    ).map(lambda t: t.isoformat())
    runs = [0]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(st.tuples(valid_data(avsc), times), min_size=1, max_size=6))
    def check(sent: list[tuple[dict[str, Any], str | None]]) -> None:
        runs[0] += 1
        h = Harness(tmp_path / f"run{runs[0]}", type_name=type_name)
        events = [_event(type_name, data, i, t) for i, (data, t) in enumerate(sent)]
        h.load(h.rows(events, H0 + 7))
        [path] = (h.lake / type_name).rglob("part-*.parquet")
        table = pq.read_table(path)
        names = ["id", "source", "type", "time", "received_at"] + [f.name for f in record.fields]
        assert table.column_names == names
        assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
        assert table.schema.field("received_at").type == pa.timestamp("us", tz="UTC")
        for f in record.fields:
            check_arrow_type(f.type, table.schema.field(f.name).type, f.name)
        rows = table.to_pylist()
        assert len(rows) == len(events)
        for e, row in zip(events, rows, strict=True):
            assert (row["id"], row["source"], row["type"]) == (e["id"], "/rows", type_name)
            assert row["received_at"] == dt.datetime.fromtimestamp(H0 + 7, dt.UTC)
            assert row["time"] == (parse_ts(e["time"]) if "time" in e else None)
            same_value(record, e["data"], row, type_name)

    check()
