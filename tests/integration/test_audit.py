"""hourglass audit: exit 0 on a healthy lake; a deleted or altered file names its bucket."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
import uuid

import msgspec
import nats

from hourglass.bus.jetstream import KIND, MSG_ID, TALLY, subject
from hourglass.config import Settings, settings_env
from hourglass.events import EventTypes
from hourglass.lake.layout import SUCCESS, bucket_dir
from hourglass.lake.retention import DELETED, Deletion, read_deletions
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import NatsServer, skipped

TYPE = "music.SongSkipped"
TYPES = EventTypes(SchemaRegistry.load(DEMO_SCHEMAS_DIR))


def publish_as_gateway(url: str, events: list[dict[str, object]], received_at: dt.datetime) -> None:
    """One bus message as a gateway stores it: NDJSON envelopes and the tally header."""
    envelopes = []
    for e in events:
        envelope = TYPES.decoders[TYPE].decode(msgspec.json.encode(e))
        envelope.received_at = received_at
        envelopes.append(envelope)
    payload = msgspec.json.Encoder().encode_lines(envelopes)
    minute = int(received_at.timestamp()) // 60

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            headers = {
                MSG_ID: f"audit-{uuid.uuid4()}",
                KIND: "batch",
                TALLY: f"{minute}:{len(events)}",
            }
            await nc.jetstream().publish(subject(TYPE), payload, headers=headers)
        finally:
            await nc.close()

    asyncio.run(run())


def audit(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "hourglass", "audit", "--type", TYPE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_proves_a_healthy_lake_and_names_a_damaged_bucket(
    start_gateway: StartGateway, start_loader: StartLoader, nats_server: NatsServer
) -> None:
    gw = start_gateway(bucket="1m")
    gw.stop()  # streams exist; no live gateway holds buckets open from here on
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    first, second = now - dt.timedelta(minutes=3), now - dt.timedelta(minutes=2)
    a = [skipped() for _ in range(30)]
    b = [skipped() for _ in range(20)]
    publish_as_gateway(nats_server.url, a, first + dt.timedelta(seconds=10))
    publish_as_gateway(nats_server.url, a[:5], first + dt.timedelta(seconds=20))  # a resend
    publish_as_gateway(nats_server.url, b, second + dt.timedelta(seconds=30))
    loader = start_loader(bucket="1m", flush_interval_s=0.5)
    lake = loader.lake
    folders = [bucket_dir(lake, TYPE, start, 60) for start in (first, second)]
    deadline = time.monotonic() + 30
    while not all((f / SUCCESS).exists() for f in folders):
        assert time.monotonic() < deadline, loader.log_tail()
        time.sleep(0.2)

    healthy = audit(loader.settings)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "0 with problems" in healthy.stdout
    line = next(x for x in healthy.stdout.splitlines() if f"{first:%Y-%m-%d %H:%M}" in x)
    assert line.split()[3:7] == ["35", "30", "5", "0"], line  # published delivered dups skewed

    parts = sorted(folders[0].glob("part-*.parquet"))
    with open(parts[0], "ab") as f:
        f.write(b"\0")  # altered after close
    for part in folders[1].glob("part-*.parquet"):
        part.unlink()  # deleted after close
    damaged = audit(loader.settings)
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    out = damaged.stdout
    first_line = next(x for x in out.splitlines() if f"{first:%Y-%m-%d %H:%M}" in x)
    second_line = next(x for x in out.splitlines() if f"{second:%Y-%m-%d %H:%M}" in x)
    assert "altered after close" in first_line and parts[0].name in first_line
    assert "20 missing" in second_line and "deleted after close" in second_line


def test_a_vanished_bucket_is_a_loss_and_one_lake_retention_deleted_is_not(
    start_gateway: StartGateway, start_loader: StartLoader, nats_server: NatsServer
) -> None:
    gw = start_gateway(bucket="1m")
    gw.stop()
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    first, second = now - dt.timedelta(minutes=3), now - dt.timedelta(minutes=2)
    publish_as_gateway(nats_server.url, [skipped() for _ in range(12)], first)
    publish_as_gateway(nats_server.url, [skipped() for _ in range(7)], second)
    loader = start_loader(bucket="1m", flush_interval_s=0.5)
    folders = [bucket_dir(loader.lake, TYPE, start, 60) for start in (first, second)]
    deadline = time.monotonic() + 30
    while not all((f / SUCCESS).exists() for f in folders):
        assert time.monotonic() < deadline, loader.log_tail()
        time.sleep(0.2)
    loader.stop()

    shutil.rmtree(folders[0])  # the whole folder of the first bucket
    lost = audit(loader.settings)
    assert lost.returncode == 1, lost.stdout + lost.stderr
    line = next(x for x in lost.stdout.splitlines() if f"{first:%Y-%m-%d %H:%M}" in x)
    assert "12 missing" in line and "no bucket folder" in line, lost.stdout

    # The same bucket deleted by lake retention (recorded first): not a loss.
    record = [Deletion(int(first.timestamp()), time.time())]
    (loader.lake / TYPE / DELETED).write_bytes(msgspec.json.encode(record))
    expired = audit(loader.settings)
    assert expired.returncode == 0, expired.stdout + expired.stderr
    assert f"{first:%Y-%m-%d %H:%M}" not in expired.stdout


def test_lake_retention_deletes_old_closed_buckets_and_the_audit_agrees(
    start_gateway: StartGateway, start_loader: StartLoader, nats_server: NatsServer
) -> None:
    gw = start_gateway(bucket="1h")
    gw.stop()
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    old, recent = hour - dt.timedelta(days=3), hour - dt.timedelta(hours=2)
    publish_as_gateway(
        nats_server.url, [skipped() for _ in range(9)], old + dt.timedelta(minutes=5)
    )
    publish_as_gateway(nats_server.url, [skipped() for _ in range(4)], recent)
    loader = start_loader(
        bucket="1h",
        flush_interval_s=0.5,
        lake_retention_days=1,
        dedup_window_s=3600,
        lake_retention_check_s=0.5,
    )
    old_folder = bucket_dir(loader.lake, TYPE, old, 3600)
    recent_folder = bucket_dir(loader.lake, TYPE, recent, 3600)
    deadline = time.monotonic() + 60
    while not (recent_folder / SUCCESS).exists() or int(old.timestamp()) not in read_deletions(
        loader.lake, TYPE
    ):
        assert time.monotonic() < deadline, loader.log_tail()
        time.sleep(0.2)
    wait_gone = time.monotonic() + 10
    while old_folder.exists():
        assert time.monotonic() < wait_gone, "recorded but not removed"
        time.sleep(0.1)
    assert "bucket deleted by lake retention" in loader.log_tail()
    assert recent_folder.exists(), "a bucket younger than the retention stays"
    time.sleep(2.0)  # later rounds must keep the record: the bus still holds its tallies
    assert int(old.timestamp()) in read_deletions(loader.lake, TYPE)

    checked = audit(loader.settings)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{old:%Y-%m-%d %H:%M}" not in checked.stdout
    line = next(x for x in checked.stdout.splitlines() if f"{recent:%Y-%m-%d %H:%M}" in x)
    assert line.split()[3:5] == ["4", "4"], line  # published, delivered
