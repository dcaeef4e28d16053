"""Partitions of one type sharing its bucket folders: names, sweeps, the shared close.

Two (or three) StreamLoaders of one type, each with its own checkpoint file, as
the loaders of the type's partition streams are (``lake/layout.py``,
``loader/close.py``); real files, a fake clock, messages built as the gateway
builds them.  Crashes are ``Crash`` raised at the code's named crash points.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import msgspec
import pyarrow.dataset as ds
import pytest

from hourglass.exceptions import ConfigError
from hourglass.lake.layout import (
    PARTITIONS,
    SUCCESS,
    Partition,
    part_name,
    part_partition,
    part_range,
    partition_of_name,
    record_name,
)
from hourglass.lake.manifest import Manifest
from hourglass.loader import compact
from hourglass.loader.staging import TMP_PREFIX

from .conftest import H0, Crash, CrashAt, Harness, key, skipped

MIN = 60


class Part(Harness):
    """The loader of partition ``index`` of ``count``; the lake is shared."""

    def __init__(self, root: Path, index: int, count: int) -> None:
        self.partition = Partition(index, count)
        super().__init__(root)


def parts(root: Path, count: int = 2) -> list[Part]:
    ps = [Part(root, i, count) for i in range(count)]
    for p in ps[1:]:
        p.clock = ps[0].clock  # one clock for all: the same machine's
        p.loader.clock = p.clock
    return ps


def manifest(p: Part, start: float) -> Manifest | None:
    return p.manifest(start)


def lake_keys(p: Part) -> list[tuple[str, str]]:
    """What a reader of the lake sees: pyarrow's dataset over the type's folder."""
    table = ds.dataset(p.lake / p.type_name, format="parquet").to_table(["source", "id"])
    sources, ids = table.column("source").to_pylist(), table.column("id").to_pylist()
    return list(zip(sources, ids, strict=True))


def test_names_say_whose_a_file_is() -> None:
    name = part_name(7, 9, 3)
    assert name == "part-p3-00000000000000000007-00000000000000000009.parquet"
    assert (part_range(name), part_partition(name), partition_of_name(name)) == ((7, 9), 3, 3)
    plain = part_name(7, 9)
    assert (part_range(plain), part_partition(plain), partition_of_name(plain)) == (
        (7, 9),
        None,
        None,
    )
    assert partition_of_name(record_name(12)) == 12
    assert partition_of_name(SUCCESS) is None
    assert Partition(1, 2).owns(record_name(1)) and not Partition(1, 2).owns(record_name(0))
    assert not Partition(1, 2).owns(SUCCESS), "the manifest is nobody's to sweep"
    assert Partition().owns(SUCCESS) and Partition().owns(plain)
    for bad in [(None, 2), (0, 1), (2, 2), (-1, 3)]:
        with pytest.raises(ValueError):
            Partition(*bad)


def test_a_bucket_closes_once_every_partition_has_closed_it(tmp_path: Path) -> None:
    p0, p1 = parts(tmp_path)
    a, b = [skipped() for _ in range(3)], [skipped() for _ in range(2)]
    p0.load(p0.rows(a, H0 + 1), p0.marker("gw", H0 + MIN))
    p1.load(p1.rows(b, H0 + 2))
    p0.clock.now = H0 + MIN + 1

    [record] = p0.loader.close_ready({"gw"}, caught_up=True)
    assert record.partition == 0 and record.count == 3
    assert manifest(p0, H0) is None, "partition 1 has not closed the bucket"
    assert (p0.folder(H0) / record_name(0)).exists()
    assert p1.loader.close_ready({"gw"}, caught_up=True) == [], "no marker in partition 1 yet"

    p1.load(p1.marker("gw", H0 + MIN))
    [record] = p1.loader.close_ready({"gw"}, caught_up=True)
    assert record.partition == 1 and record.count == 2
    m = manifest(p0, H0)
    assert m is not None and m.count == 5 and m.partitions == 2 and m.partition is None
    names = sorted(path.name for path in p0.folder(H0).glob("part-*.parquet"))
    assert [f.name for f in m.files] == names
    assert {part_partition(n) for n in names} == {0, 1}
    assert sorted(lake_keys(p0)) == sorted(key(e) for e in a + b)
    assert p0.state().unsealed == H0, "partition 0 has not looked since"
    assert p0.loader.unsealed_buckets == 1
    p0.loader.close_ready({"gw"}, caught_up=True)
    # In memory; saved with the next checkpoint (sealing again costs a look).
    assert p1.loader.state.unsealed is None and p0.loader.state.unsealed is None
    assert p0.loader.unsealed_buckets == 0


def test_the_last_partition_dying_before_it_seals_leaves_the_seal_to_another(
    tmp_path: Path, crash_at: CrashAt
) -> None:
    p0, p1 = parts(tmp_path)
    p0.load(p0.rows([skipped()], H0 + 1), p0.marker("gw", H0 + MIN))
    p1.load(p1.rows([skipped()], H0 + 1), p1.marker("gw", H0 + MIN))
    p0.clock.now = H0 + MIN + 1
    p0.loader.close_ready({"gw"}, caught_up=True)
    crash_at("loader.before_seal")
    with pytest.raises(Crash):
        p1.loader.close_ready({"gw"}, caught_up=True)  # its record saved, then killed
    assert (p1.folder(H0) / record_name(1)).exists() and manifest(p1, H0) is None
    assert p1.state().unsealed == H0

    p0.loader.close_ready({"gw"}, caught_up=True)  # partition 0's next round seals it
    m = manifest(p0, H0)
    assert m is not None and m.count == 2
    before = (p0.folder(H0) / SUCCESS).read_bytes()
    p1.restart()
    p1.loader.close_ready({"gw"}, caught_up=True)
    assert (p0.folder(H0) / SUCCESS).read_bytes() == before, "written once, never replaced"
    assert p1.loader.state.unsealed is None
    leftovers = [n.name for n in p0.folder(H0).iterdir() if n.name.startswith(TMP_PREFIX)]
    assert leftovers == []


def test_a_partition_crashed_after_its_record_was_saved_seals_on_restart(
    tmp_path: Path, crash_at: CrashAt
) -> None:
    """Killed between the checkpoint that names its record and the rename: recovery
    publishes the record and the bucket is sealed by the next round."""
    p0, p1 = parts(tmp_path)
    for p in (p0, p1):
        p.load(p.rows([skipped()], H0 + 1), p.marker("gw", H0 + MIN))
    p0.clock.now = H0 + MIN + 1
    p0.loader.close_ready({"gw"}, caught_up=True)
    crash_at("loader.after_close_checkpoint")
    with pytest.raises(Crash):
        p1.loader.close_ready({"gw"}, caught_up=True)
    assert not (p1.folder(H0) / record_name(1)).exists(), "still staged"
    p1.restart()
    assert (p1.folder(H0) / record_name(1)).exists(), "published by recovery"
    p1.loader.close_ready({"gw"}, caught_up=True)
    m = manifest(p1, H0)
    assert m is not None and m.count == 2


def test_a_partition_sweeps_only_its_own_staged_files(tmp_path: Path, crash_at: CrashAt) -> None:
    p0, p1 = parts(tmp_path)
    p0.load(p0.rows([skipped()], H0 + 1))
    crash_at("loader.before_checkpoint")
    e = skipped()
    with pytest.raises(Crash):
        p1.load(p1.rows([e], H0 + 2))  # staged, never committed
    staged = [n for n in p1.folder(H0).iterdir() if n.name.startswith(TMP_PREFIX)]
    assert len(staged) == 1
    p0.restart()  # the same epoch: without the partition in the name it would go
    assert staged[0].exists(), "partition 0 deleted partition 1's file"
    p0.load(p0.rows([skipped()], H0 + 3), p0.marker("gw", H0 + MIN))
    p0.clock.now = H0 + MIN + 1
    p0.loader.close_ready({"gw"}, caught_up=True)  # a close sweeps the folder too
    assert staged[0].exists()
    p1.restart()
    assert not staged[0].exists(), "partition 1's own recovery deletes it"
    p1.seq = 0
    p1.load(p1.rows([e], H0 + 2))  # the message comes again
    assert lake_keys(p1).count(key(e)) == 1


def test_a_partition_reads_back_only_its_own_keys(tmp_path: Path) -> None:
    p0, p1 = parts(tmp_path)
    p0.load(p0.rows([skipped() for _ in range(3)], H0 + 1))
    e = skipped()
    p1.load(p1.rows([e, skipped()], H0 + 1))
    p1.restart()
    assert p1.loader.deduper is not None and p1.loader.deduper.keys == 2
    p1.load(p1.rows([e], H0 + 5))  # a re-send after the restart
    assert lake_keys(p1).count(key(e)) == 1
    assert p1.loader.deduper.folder == p1.lake / p1.type_name / "_dedup" / "p1"


def test_partitions_agree_on_the_first_bucket_they_close(tmp_path: Path) -> None:
    """Partition 1's first rows come a bucket later: it still closes the first one
    (an empty record), or that bucket would never get its manifest."""
    p0, p1 = parts(tmp_path)
    a = skipped()
    p0.load(p0.rows([a], H0 + 1), p0.marker("gw", H0 + 2 * MIN))
    p0.clock.now = H0 + MIN + 5
    b = skipped()
    p1.load(p1.rows([b], H0 + MIN + 1), p1.marker("gw", H0 + 2 * MIN))
    agreed = msgspec.json.decode((p0.lake / p0.type_name / PARTITIONS).read_bytes())
    assert agreed == {"partitions": 2, "first_bucket": H0}
    p0.clock.now = H0 + 2 * MIN + 1
    assert len(p0.loader.close_ready({"gw"}, caught_up=True)) == 2
    assert len(p1.loader.close_ready({"gw"}, caught_up=True)) == 2
    first, second = manifest(p0, H0), manifest(p0, H0 + MIN)
    assert first is not None and first.count == 1
    assert second is not None and second.count == 1
    assert p1.keys_in(H0 + MIN) == [key(b)]


def test_a_lake_written_with_other_partitions_is_refused(tmp_path: Path) -> None:
    [p0, _] = parts(tmp_path)
    p0.load(p0.rows([skipped()], H0 + 1))  # agrees: 2 partitions
    other = Part(tmp_path / "other", 2, 3)
    other.root = tmp_path  # the same lake, asked with 3
    other.restart()
    with pytest.raises(ConfigError, match="written with 2 partitions, not 3"):
        other.load(other.rows([skipped()], H0 + 1))


def test_partition_zero_compacts_a_sealed_bucket_within_each_partition(tmp_path: Path) -> None:
    p0, p1 = parts(tmp_path)
    a, b = [], []
    for i in range(3):  # three flushes each: three part files per partition
        a.append(skipped())
        b.append(skipped())
        p0.load(p0.rows([a[-1]], H0 + 1 + i))
        p1.load(p1.rows([b[-1]], H0 + 1 + i))
    p0.load(p0.marker("gw", H0 + MIN))
    p1.load(p1.marker("gw", H0 + MIN))
    p0.clock.now = H0 + MIN + 1
    p0.loader.close_ready({"gw"}, caught_up=True)
    stop = threading.Event()
    done: list[compact.Compacted] = []
    assert compact.compact_closed(p0.loader, 1 << 30, stop, done.append) == 1, "not sealed yet"
    assert done == []
    p1.loader.close_ready({"gw"}, caught_up=True)
    assert compact.compact_closed(p1.loader, 1 << 30, stop, done.append) == 0
    assert done == [], "only partition 0 compacts"
    assert compact.compact_closed(p0.loader, 1 << 30, stop, done.append) == 0
    [result] = done
    assert (result.files_before, result.files_after, result.rows) == (6, 2, 6)
    names = sorted(path.name for path in p0.folder(H0).glob("part-*.parquet"))
    assert [part_partition(n) for n in names] == [0, 1]
    assert [part_range(n) for n in names] == [(1, 3), (1, 3)]
    m = manifest(p0, H0)
    assert m is not None and m.compacted_from == 6 and m.partitions == 2
    assert sorted(lake_keys(p0)) == sorted(key(e) for e in a + b)


def test_a_partition_that_is_behind_holds_buckets_open_in_one_number(tmp_path: Path) -> None:
    """Partition 1 is down for five minutes: partition 0's checkpoint says so in
    one field, the metric counts the buckets, and they all seal once it is back."""
    p0, p1 = parts(tmp_path)
    p0.load(p0.rows([skipped()], H0 + 1))
    p1.load(p1.rows([skipped()], H0 + 1))
    p0.load(p0.marker("gw", H0 + 5 * MIN))
    p0.clock.now = H0 + 5 * MIN + 1
    assert len(p0.loader.close_ready({"gw"}, caught_up=True)) == 5
    p0.loader.flush()
    p0.load(p0.rows([skipped()], H0 + 5 * MIN + 2))  # a checkpoint with the state
    assert p0.state().unsealed == H0 and p0.loader.unsealed_buckets == 5
    assert all(manifest(p0, H0 + i * MIN) is None for i in range(5))
    p1.load(p1.marker("gw", H0 + 5 * MIN))
    assert len(p1.loader.close_ready({"gw"}, caught_up=True)) == 5
    assert all(manifest(p0, H0 + i * MIN) is not None for i in range(5))
    p0.loader.close_ready({"gw"}, caught_up=True)
    assert p0.loader.state.unsealed is None and p0.loader.unsealed_buckets == 0


def test_a_bucket_deleted_while_a_partition_was_away_is_not_waited_for(
    tmp_path: Path, crash_at: CrashAt
) -> None:
    p0, p1 = parts(tmp_path)
    for p in (p0, p1):
        p.load(p.rows([skipped()], H0 + 1), p.marker("gw", H0 + MIN))
    p0.clock.now = H0 + MIN + 1
    p0.loader.close_ready({"gw"}, caught_up=True)
    crash_at("loader.before_seal")
    with pytest.raises(Crash):
        p1.loader.close_ready({"gw"}, caught_up=True)
    p0.loader.close_ready({"gw"}, caught_up=True)  # sealed by partition 0
    shutil.rmtree(p0.folder(H0))  # lake retention, while partition 1 was away
    p1.restart()
    assert p1.loader.state.unsealed == H0
    p1.loader.close_ready({"gw"}, caught_up=True)
    assert p1.loader.state.unsealed is None
    assert not p1.folder(H0).exists(), "nothing brought back"


def test_a_backlog_older_than_the_first_drained_partition_keeps_its_buckets(
    tmp_path: Path,
) -> None:
    """Partition 0 has nothing and is drained at H0 + 3 min; partition 1 holds a
    backlog from H0.  With the bus's hint (its first message's time, service.py),
    the partitions start closing at H0, not at H0 + 3 min with the backlog
    counted as skewed there."""
    p0, p1 = parts(tmp_path)
    for p in (p0, p1):
        p.loader.first_hint = H0  # the earliest any event of the type can be in
    p0.clock.now = H0 + 3 * MIN + 10
    p0.load(p0.marker("gw", H0 + 3 * MIN + 5))
    p0.loader.close_ready({"gw"}, caught_up=True)
    backlog = [skipped() for _ in range(5)]
    p1.load(p1.rows(backlog, H0 + 5), p1.marker("gw", H0 + 3 * MIN + 5))
    assert len(p1.loader.close_ready({"gw"}, caught_up=True)) == 3
    first = manifest(p1, H0)
    assert first is not None and first.count == 5 and first.skewed == 0
    assert sorted(p1.keys_in(H0)) == sorted(key(e) for e in backlog)


def test_a_lake_without_hard_links_is_refused_for_partitioned_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hourglass.loader.streams import check_hard_links

    check_hard_links(tmp_path / "lake")  # this one has them
    assert list((tmp_path / "lake").iterdir()) == [], "the probe leaves nothing"

    def no_links(src: object, dst: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("hourglass.loader.streams.os.link", no_links)
    with pytest.raises(ConfigError, match="without hard links"):
        check_hard_links(tmp_path / "lake")
    assert list((tmp_path / "lake").iterdir()) == []
