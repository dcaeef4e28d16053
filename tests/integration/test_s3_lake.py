"""The lake on S3: a real S3 HTTP API (moto's server, a process of its own),
written by real loader processes, read back by pyarrow's S3 file system, DuckDB
over it, boto3's listing, and ``hourglass audit``/``query`` pointed at the URL.

* The store contract (``lake/store.py``) holds the same on a folder and on S3:
  a create is once only, a rename of what is gone says so, listings see folders.
* A loader killed (-9) at each step of a flush and of a close leaves nothing
  half-counted on S3: a staged object no checkpoint names (swept by the next
  owner), or a committed one (published by it); never a visible part file of a
  flush that did not commit, nor two copies of one.
* A partitioned type on S3 loaded by two loaders, one killed under load: each
  event once, one manifest per bucket (created with ``If-None-Match``) listing
  every partition's files, closed within a minute, and the audit agrees.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import msgspec
import pytest

from hourglass.config import Settings, settings_env
from hourglass.lake.dataset import type_dataset
from hourglass.lake.layout import SUCCESS, bucket_key, part_partition, part_range
from hourglass.lake.manifest import Manifest
from hourglass.lake.s3 import S3Store, check_conditional
from hourglass.lake.store import LocalStore, Store, lake_store
from hourglass.loader.staging import publish, stage, sweep, write_bytes
from tests.chaos.conftest import (
    FAST,
    SKIPPED,
    Key,
    Sender,
    assert_exactly_once,
    away_from_minute_edge,
    keys_of_events,
    minute_start,
    publish_events,
    wait_until,
)
from tests.groups import TIMING
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import LoaderProcess, MotoServer, NatsServer, post, skipped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "folder":
        yield LocalStore(tmp_path / "lake")
        return
    server = request.getfixturevalue("s3")
    yield S3Store("lake", "contract", endpoint=server.endpoint)


def test_the_store_contract_holds_on_a_folder_and_on_s3(store: Store) -> None:
    key = "t/date=2026-03-01/hour=10/part-1.parquet"
    temp, size = stage(store, key, 3, write_bytes(b"rows"))
    assert size == 4 and not store.exists(key)
    assert [e.name for e in store.files("t/date=2026-03-01/hour=10")] == [temp.rsplit("/")[-1]]
    assert publish(store, {key: temp}) == 1
    assert store.read(key) == b"rows" and not store.exists(temp)
    assert publish(store, {key: temp}) == 0, "a staged file that is gone was published"
    assert store.folders("t") == ["date=2026-03-01"] and store.folders("t/nope") == []
    # Created once: the second creator is told, and the first's bytes stay.
    assert store.create("t/_partitions.json", b"first", "t/.tmp-a")
    assert not store.create("t/_partitions.json", b"second", "t/.tmp-b")
    assert store.read("t/_partitions.json") == b"first"
    # A sweep removes what an epoch up to its own staged and no checkpoint named.
    stage(store, "t/date=2026-03-01/hour=10/part-2.parquet", 2, write_bytes(b"x"))
    later, _ = stage(store, "t/date=2026-03-01/hour=10/part-3.parquet", 9, write_bytes(b"y"))
    assert sweep(store, "t/date=2026-03-01/hour=10", 3, keep=[]) == 1
    names = {e.name for e in store.files("t/date=2026-03-01/hour=10")}
    assert names == {"part-1.parquet", later.rsplit("/")[-1]}
    with pytest.raises(FileNotFoundError):
        store.read("t/nothing")
    store.delete("t/nothing")  # gone already: not an error
    if isinstance(store, S3Store):
        check_conditional(store)  # moto honours If-None-Match, as S3 does


# ------------------------------------------------------------------- helpers


def s3_lake(server: MotoServer, prefix: str) -> dict[str, Any]:
    return {"lake": f"s3://{server.bucket}/{prefix}", "s3_endpoint": server.endpoint}


def objects(server: MotoServer, prefix: str) -> list[str]:
    """Every key under the lake's prefix, by boto3 (another S3 client)."""
    client = boto3.client("s3", endpoint_url=server.endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=server.bucket, Prefix=f"{prefix}/"
    ):
        keys += [o["Key"].removeprefix(f"{prefix}/") for o in page.get("Contents", [])]
    return sorted(keys)


def lake_keys_s3(settings: Settings, type_name: str) -> tuple[list[Key], list[Key]]:
    """(source, id) of every row of the type, read by pyarrow's S3 file system and
    by DuckDB over the same dataset."""
    rows = type_dataset(settings, lake_store(settings), type_name)
    if rows is None:
        return [], []
    table = rows.to_table(columns=["source", "id"])
    by_arrow = list(zip(table["source"].to_pylist(), table["id"].to_pylist(), strict=True))
    with duckdb.connect() as con:
        con.register("rows", rows)
        by_duck = [
            (str(s), str(i)) for s, i in con.execute("select source, id from rows").fetchall()
        ]
    return by_arrow, by_duck


def manifest_of(settings: Settings, start: dt.datetime) -> Manifest | None:
    store = lake_store(settings)
    try:
        data = store.read(f"{bucket_key(SKIPPED, start, 60)}/{SUCCESS}")
    except FileNotFoundError:
        return None
    return msgspec.json.decode(data, type=Manifest)


def hourglass(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hourglass", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------- crash points


@pytest.mark.chaos
@pytest.mark.parametrize(
    "point", ["loader.after_part", "loader.after_checkpoint", "loader.after_manifest"]
)
def test_a_loader_killed_mid_flush_or_close_leaves_nothing_half_counted_on_s3(
    point: str,
    s3: MotoServer,
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
) -> None:
    prefix = point.replace(".", "-")
    settings: dict[str, Any] = {**FAST, "schemas": one_type_schemas, **s3_lake(s3, prefix)}
    away_from_minute_edge(4)
    current = minute_start(time.time())
    b1, b2 = current - 3 * MINUTE, current - 2 * MINUTE
    gw = start_gateway(**settings)
    now_batch = [skipped(source="/gateway") for _ in range(30)]
    assert post(gw.base, now_batch).status_code == 200
    k1 = [skipped(source="/backlog") for _ in range(20)]
    k2 = [skipped(source="/backlog") for _ in range(20)]
    publish_events(nats_server.url, k1 + [k1[0]], b1 + dt.timedelta(seconds=10))
    publish_events(nats_server.url, k2 + k1[:5], b2 + dt.timedelta(seconds=20))

    crashing = start_loader(env={"HOURGLASS_CRASHPOINT": point}, **settings)
    assert crashing.wait_exit(30) == -signal.SIGKILL, crashing.log_tail()
    found = objects(s3, prefix)
    visible = [k for k in found if part_range(k.rsplit("/", 1)[-1])]
    staged = [k for k in found if "/.tmp-" in k]
    where = f"{point}: {found}"
    if point == "loader.after_part":  # the first part staged, nothing committed
        assert not visible and len(staged) == 1, where
    elif point == "loader.after_checkpoint":  # committed, not yet published
        assert not visible and len(staged) == 3, where
    else:  # the parts published, the first manifest staged, not saved
        assert len(visible) == 3 and staged == [
            k for k in staged if k.endswith(".tmp-e1-_SUCCESS.json.staged")
        ], where
    assert not [k for k in found if k.endswith(SUCCESS)], where

    sender = Sender(gw.base, make=lambda: skipped(source="/sender"))
    sender.start()
    try:
        sender.wait_for(60)  # acknowledged while no loader runs
        loader = start_loader(**settings)
        sender.wait_for(len(sender.acked) + 100)
    finally:
        acked = sender.finish()
    lake = loader.settings
    expected = keys_of_events(now_batch + k1 + k2) + acked
    wait_until(
        lambda: set(lake_keys_s3(lake, SKIPPED)[0]) >= set(expected), 30, "every event loaded"
    )
    wait_until(lambda: all(manifest_of(lake, b) for b in (b1, b2)), 30, "the backlog closed")
    loader.stop()
    by_arrow, by_duck = lake_keys_s3(lake, SKIPPED)
    assert_exactly_once(by_arrow, expected, maybe=sender.unanswered)
    assert_exactly_once(by_duck, expected, maybe=sender.unanswered)
    assert [k for k in objects(s3, prefix) if "/.tmp-" in k] == [], "a staged object survived"
    m1, m2 = manifest_of(lake, b1), manifest_of(lake, b2)
    assert m1 is not None and m2 is not None
    assert (m1.count, m1.duplicates_dropped, m2.count, m2.duplicates_dropped) == (20, 1, 20, 5)


# ------------------------------------------------------- a group, under load


@TIMING
def test_a_partitioned_type_on_s3_closes_each_bucket_once_within_a_minute(
    s3: MotoServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    one_type_schemas: str,
    tmp_path: Path,
) -> None:
    """Two loaders, each with a data folder of its own (two machines), share the
    type's two partitions; one is killed (-9) under load and the other takes its
    partition over with none of its local files: the index comes from the lake,
    so a re-send of an event the dead one loaded is still dropped."""
    settings: dict[str, Any] = {
        **FAST,
        "schemas": one_type_schemas,
        "type_partitions": {SKIPPED: 2},
        "dedup_run_keys": 100,  # runs are written (and mirrored) within seconds
        **s3_lake(s3, "group"),
    }
    gw = start_gateway(**settings)
    loaders = [start_loader(data_dir=str(tmp_path / f"machine-{i}"), **settings) for i in (0, 1)]
    lake = loaders[1].settings
    sent = [skipped(source="/resent") for _ in range(300)]
    assert post(gw.base, sent).status_code == 200
    sender = Sender(gw.base, make=lambda: skipped(source="/s3"))
    sender.start()
    started = time.time()
    try:
        sender.wait_for(300, timeout=30)
        wanted = set(keys_of_events(sent))
        wait_until(lambda: set(lake_keys_s3(lake, SKIPPED)[0]) >= wanted, 30, "the batch loaded")
        loaders[0].kill()
        wait_until(lambda: owned(loaders[1]) == 2, 30, "the survivor owns both partitions")
        assert post(gw.base, sent).status_code == 200  # a client's retry, after the takeover
        # Traffic goes on past the end of the minute it started in.
        first = minute_start(started)
        time.sleep(max(0.0, (first + MINUTE).timestamp() - time.time() + 3))
        sender.wait_for(len(sender.acked) + 200, timeout=30)
    finally:
        acked = sender.finish()
    expected = keys_of_events(sent) + acked
    wait_until(lambda: manifest_of(lake, first) is not None, 60, "the first minute's manifest")
    wait_until(
        lambda: set(lake_keys_s3(lake, SKIPPED)[0]) >= set(expected), 30, "every event loaded"
    )
    manifest = manifest_of(lake, first)
    assert manifest is not None and manifest.partitions == 2
    assert {part_partition(f.name) for f in manifest.files} == {0, 1}
    assert manifest.close_delay_s <= 60, manifest.close_delay_s
    by_arrow, by_duck = lake_keys_s3(lake, SKIPPED)
    assert_exactly_once(by_arrow, expected, maybe=sender.unanswered)
    assert_exactly_once(by_duck, expected, maybe=sender.unanswered)
    log = loaders[1].log_path.read_text()
    assert "took the stream over" in log and "unreadable" not in log
    found = objects(s3, "group")
    assert f"{SKIPPED}/_partitions.json" in found
    assert any(k.startswith(f"{SKIPPED}/_dedup/p") for k in found), "the index is in the lake"

    audit = hourglass(lake, "audit", "--type", SKIPPED)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    query = hourglass(lake, "query", f'select count(*) from "{SKIPPED}"')  # noqa: S608
    assert query.returncode == 0, query.stderr
    assert str(len(by_arrow)) in query.stdout, query.stdout


def owned(loader: LoaderProcess) -> int:
    """Partitions of the type this loader process claimed, from its log."""
    return sum(
        1
        for line in loader.log_path.read_text().splitlines()
        if "owner of the stream" in line and f"stream={SKIPPED}/" in line
    )
