"""Events of Hourglass's own producers: deduplicated by sequence, the table saved
with each flush, never ahead of the lake, the attributes never in a lake file."""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass.lake.arrow import SEQUENCE_COLUMNS, LakeSchema
from hourglass.loader.state import Saved
from tests.strategies import valid_data
from tests.unit.loader.conftest import (
    H0,
    REGISTRY,
    Crash,
    CrashAt,
    Harness,
    key,
    ndjson,
    skipped,
)


def stamped(producer: str, seq: int, acked: int, event_id: str | None = None) -> dict[str, Any]:
    return skipped("/sdk", event_id) | {"hgproducer": producer, "hgseq": seq, "hgacked": acked}


def saved(h: Harness) -> Saved:
    return msgspec.json.decode(h.state_path.read_bytes(), type=Saved)


def dedup_files(h: Harness, prefix: str) -> list[str]:
    folder = h.lake / h.type_name / "_dedup"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix))


def test_sequenced_rows_go_by_sequence_foreign_rows_by_key(harness: Harness) -> None:
    h = harness
    ours = [stamped("s1", n, 0) for n in range(1, 6)]
    foreign = [skipped("/web") for _ in range(3)]
    h.load(h.rows(ours + foreign, H0 + 1))
    # The same sequences under new ids are still re-sends: the sequence decides.
    again = [stamped("s1", n, 0) for n in (2, 4)]
    new = stamped("s1", 6, 5)
    h.load(h.rows([*again, foreign[0], new], H0 + 2))
    assert sorted(h.keys()) == sorted(map(key, [*ours, *foreign, new]))
    assert h.loader.stats.duplicates == 3
    assert h.loader.deduper is not None
    assert h.loader.deduper.keys == 3  # only the foreign keys went to the key window
    report = h.loader.deduper.report(h.clock())
    assert report.producers == 1


def test_no_lake_file_holds_the_sequence_attributes(harness: Harness) -> None:
    h = harness
    h.load(h.rows([stamped("s1", 1, 0), skipped("/web")], H0 + 1))
    for path in (h.lake / h.type_name).rglob("part-*.parquet"):
        names = pq.read_schema(path).names
        assert not [n for n in names if "hg" in n], names


def test_the_table_is_saved_with_each_flush_and_read_back_after_a_restart(
    harness: Harness,
) -> None:
    h = harness
    first = [stamped("s1", n, 0) for n in range(1, 4)]
    h.load(h.rows(first, H0 + 1))
    h.load(h.rows([stamped("s1", 4, 3)], H0 + 2))
    name = saved(h).dedup.producers  # type: ignore[union-attr]
    assert dedup_files(h, "producers-") == [name]  # the earlier one was deleted
    stale = h.lake / h.type_name / "_dedup" / "producers-e0-00000000000000000001.hgp"
    stale.write_bytes(b"left by a crash")
    h.restart()
    assert not stale.exists()  # no checkpoint names it: swept
    resent = [stamped("s1", 1, 0), stamped("s1", 3, 0), stamped("s1", 4, 3)]
    h.load(h.rows([*resent, stamped("s1", 5, 4)], H0 + 3))
    assert len(h.keys()) == 5
    assert h.loader.stats.duplicates == 3


def test_rows_processed_but_not_flushed_are_not_remembered_after_a_crash(
    harness: Harness, crash_at: CrashAt
) -> None:
    h = harness
    first = stamped("s1", 1, 0)
    h.load(h.rows([first], H0 + 1))
    batch = [stamped("s1", n, 1) for n in (2, 3)]
    message = h.rows(batch, H0 + 2)
    crash_at("loader.before_checkpoint")
    with pytest.raises(Crash):
        h.load(message)
    h.restart()
    h.load(message)  # redelivered: its rows were never in the lake, so they are kept
    assert sorted(h.keys()) == sorted(map(key, [first, *batch]))
    assert h.loader.stats.duplicates == 0


def test_an_unreadable_table_lets_re_sends_through_and_drops_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    events = [stamped("s1", n, 0) for n in (1, 2)]
    h.load(h.rows(events, H0 + 1))
    name = saved(h).dedup.producers  # type: ignore[union-attr]
    assert name is not None
    (h.lake / h.type_name / "_dedup" / name).write_bytes(b"\x00not msgpack")
    h.restart()
    assert "producer sequence table unreadable" in caplog.text
    h.load(h.rows([stamped("s1", 2, 0), stamped("s1", 3, 0)], H0 + 2))
    assert len(h.keys()) == 4  # seq 2 again (a duplicate let through), seq 3 new


def test_copies_within_one_batch_and_below_the_floor(harness: Harness) -> None:
    h = harness
    h.load(h.rows([stamped("a", 1, 0), stamped("a", 1, 0), stamped("b", 1, 0)], H0 + 1))
    # "a" answered through 10 (say 2..10 were rejected): anything at or below is old.
    h.load(h.rows([stamped("a", 11, 10)], H0 + 2))
    h.load(h.rows([stamped("a", 7, 0), stamped("b", 7, 0)], H0 + 3))
    assert len(h.keys()) == 4  # a1, b1, a11, b7
    assert h.loader.stats.duplicates == 2


def test_a_partial_or_inconsistent_sequence_goes_by_key(harness: Harness) -> None:
    h = harness
    odd = [
        stamped("s1", 3, 3),  # hgacked not below hgseq
        skipped("/sdk") | {"hgseq": 4},  # alone
    ]
    h.load(h.rows(odd, H0 + 1))
    h.load(h.rows([odd[0] | {"hgseq": 9, "hgacked": 9}, odd[1]], H0 + 2))  # same keys
    assert sorted(h.keys()) == sorted(map(key, odd))
    assert h.loader.deduper is not None and h.loader.deduper.keys == 2
    assert len(h.loader.deduper.producers) == 0


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_every_type_s_rows_carry_the_sequence_columns(data: st.DataObject) -> None:
    """Both ways in (Arrow's JSON reader, msgspec for bytes/fixed/map types)."""
    schema = data.draw(st.sampled_from(sorted(REGISTRY, key=lambda s: s.type_name)))
    value = data.draw(valid_data(schema.avro))
    event = {
        "specversion": "1.0",
        "id": "e1",
        "source": "/t",
        "type": schema.type_name,
        "data": value,
        "hgproducer": "s-1",
        "hgseq": 5,
        "hgacked": 4,
    }
    plain = {k: v for k, v in event.items() if not k.startswith("hg")} | {"id": "e2"}
    table = LakeSchema(schema).to_table(ndjson([event, plain], H0))
    assert table.select(SEQUENCE_COLUMNS).to_pylist() == [
        dict(zip(SEQUENCE_COLUMNS, ("s-1", 5, 4), strict=True)),
        dict.fromkeys(SEQUENCE_COLUMNS),
    ]
