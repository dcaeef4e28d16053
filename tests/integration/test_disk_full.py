"""A full disk under the bus store and under the lake, on a small tmpfs mounted here.

* Bus store full: the gateway answers 503 with Retry-After for what it could not
  store and never 200; everything answered 200 is on the bus; when space
  returns, the embedded bus's supervisor restarts nats-server (which otherwise
  keeps refusing the stream's writes) and 200s come back without manual steps.
* Lake full: the loader logs "lake filesystem full, pausing" once, keeps running,
  leaves no file a Parquet reader would pick up, and resumes by itself;
  every acknowledged event lands exactly once and the manifests match.  The
  in-process test drives the loader's retry on a failed checkpoint and a failed
  manifest write, with a fake clock so a bucket closes without waiting a minute.

Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pyarrow.parquet as pq
import pytest

from hourglass.bus.consumer import BusMessage
from hourglass.bus.embedded import free_port
from hourglass.config import Settings
from hourglass.lake.arrow import LakeSchema
from hourglass.lake.layout import bucket_dir, part_name
from hourglass.lake.parquet import write_part
from hourglass.loader.metrics import LakeSpace, LoaderMetrics
from hourglass.loader.service import stored_once, until_stored
from hourglass.loader.state import FileCheckpoints
from hourglass.loader.stream import StreamLoader
from hourglass.loader.streams import Stream
from hourglass.schemas import DEMO_SCHEMAS_DIR
from tests.chaos.conftest import (
    REGISTRY,
    SKIPPED,
    Key,
    assert_exactly_once,
    assert_manifest_matches,
    bus_lines,
    keys_of_events,
    lake_keys,
    lake_keys_duckdb,
    manifests,
    minute_start,
    publish_events,
    wait_until,
)
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import (
    BATCH,
    GatewayProcess,
    HourglassProcess,
    NatsServer,
    events_of,
    metric_total,
    skipped,
    wait_port,
)

pytestmark = pytest.mark.timeout(90)

FS_SIZE = "20m"
MiB = 1024 * 1024
FAST: dict[str, Any] = {
    "bucket": "1m",
    "marker_interval_s": 0.5,
    "lease_ttl_s": 3.0,
    "flush_interval_s": 0.5,
}


# ------------------------------------------------------------ the small disk


@dataclass
class SmallFs:
    path: Path
    fillers: list[Path] = field(default_factory=list)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take every free byte (then give ``leave`` bytes, page-aligned, back)."""
        path = self.path / f"filler-{len(self.fillers)}"
        self.fillers.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (MiB, 4096):
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        if leave:
            os.truncate(path, path.stat().st_size - leave)
        assert self.free() == leave, (self.free(), leave)

    def unfill(self) -> None:
        for path in self.fillers:
            path.unlink(missing_ok=True)
        self.fillers.clear()


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


def _our_processes_using(mount: Path) -> list[int]:
    """Processes started by this test run with a file or cwd under ``mount``."""
    me, prefix = os.getpid(), str(mount)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            links = [os.readlink(entry / "cwd")]
            links += [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(ln == prefix or ln.startswith(prefix + "/") for ln in links):
            if _descends_from(int(entry.name), me):
                found.append(int(entry.name))
    return found


def _unmount(mount: Path) -> None:
    for _ in range(50):
        for pid in _our_processes_using(mount):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A 20 MiB tmpfs under tmp_path, unmounted at the end whatever happened.

    Request it before the process fixtures, so they stop first.
    """
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=20,
        )
    except FileNotFoundError:
        pytest.skip("cannot mount tmpfs: no mount command")
    except subprocess.CalledProcessError as exc:
        lines = exc.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[0] if lines else f"exit code {exc.returncode}"
        pytest.skip(f"cannot mount tmpfs (needs root / CAP_SYS_ADMIN): {reason}")
    fs = SmallFs(mount)
    try:
        yield fs
    finally:
        fs.fillers.clear()
        _unmount(mount)


def _one_type_schemas(folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    shutil.copy(DEMO_SCHEMAS_DIR / "SongSkipped.avsc", folder / "SongSkipped.avsc")
    return str(folder)


# ------------------------------------------------------------- traffic


class Sender(threading.Thread):
    """Posts batches back to back; keeps every status, Retry-After and acked key."""

    def __init__(self, base: str, batch: int = 10, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.base, self.batch, self.pause = base, batch, pause
        self.answers: list[tuple[float, int, str | None]] = []  # (time, status, retry-after)
        self.acked: list[Key] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.halt.is_set():
                events = [skipped() for _ in range(self.batch)]
                try:
                    r = client.post(
                        "/v1/events", content=msgspec.json.encode(events), headers=BATCH
                    )
                except httpx.HTTPError:
                    continue
                self.answers.append((time.monotonic(), r.status_code, r.headers.get("retry-after")))
                if r.status_code == 200:
                    self.acked.extend(keys_of_events(events))
                time.sleep(self.pause)

    def statuses_since(self, t: float) -> list[int]:
        return [status for when, status, _ in list(self.answers) if when >= t]

    def finish(self) -> None:
        self.halt.set()
        self.join(40)
        assert not self.is_alive()


# ---------------------------------------------------------------- bus full


def test_bus_store_full_answers_503_and_recovers_by_itself(
    small_fs: SmallFs, tmp_path: Path
) -> None:
    bus_port = free_port()
    bus_log = tmp_path / "bus.log"
    with ExitStack() as stack:
        # `hourglass bus`: the embedded bus with its supervisor, its store on the tmpfs.
        bus = HourglassProcess(
            Settings(data_dir=str(small_fs.path), bus_port=bus_port), bus_log, command="bus"
        )
        stack.callback(bus.stop)
        bus.start()
        wait_port(bus_port)
        url = f"nats://127.0.0.1:{bus_port}"
        settings = Settings(
            data_dir=str(tmp_path / "gw"),
            schemas=_one_type_schemas(tmp_path / "schemas"),
            port=free_port(),
            bus=url,
            stream_replicas=1,
            publish_timeout_s=1.0,
            stream_max_bytes=4 * MiB,  # reserved up front: 2 streams on a 20 MiB disk
            **FAST,
        )
        gw = GatewayProcess(settings, log_path=tmp_path / "gateway.log")
        stack.callback(gw.stop)
        gw.start()
        sender = Sender(gw.base)
        stack.callback(sender.halt.set)
        sender.start()
        wait_until(lambda: len(sender.acked) >= 100, 15, "events acknowledged")

        small_fs.fill()
        full_at = time.monotonic()
        wait_until(
            lambda: sender.statuses_since(full_at).count(503) >= 3, 20, "503s on a full store"
        )
        nats_log = (small_fs.path / "bus" / "nats.log").read_text(errors="replace")
        assert "no space left on device" in nats_log, nats_log[-2000:]
        wait_until(
            lambda: "bus store write failed" in bus_log.read_text(), 10, "the supervisor noticed"
        )
        assert bus.alive()

        small_fs.unfill()
        freed_at = time.monotonic()
        wait_until(
            lambda: sender.statuses_since(freed_at).count(200) >= 10,
            30,
            f"200s after space returned\n{bus_log.read_text()[-3000:]}",
        )
        sender.finish()
        assert httpx.get(gw.base + "/readyz").status_code == 200

    statuses = [status for _, status, _ in sender.answers]
    assert set(statuses) <= {200, 503}, statuses
    assert all(
        retry is not None and int(retry) >= 1
        for _, status, retry in sender.answers
        if status == 503
    ), "every 503 carries Retry-After"
    log = bus_log.read_text()
    assert "restarting nats-server to clear its store write error" in log, log[-3000:]

    # Everything answered 200 is on the bus (read with a plain server on the same store).
    server = NatsServer(tmp_path / "bus-check")
    shutil.copytree(small_fs.path / "bus" / "store", server.root / "store")
    server.start()
    try:
        stored = {(e["source"], e["id"]) for e in events_of(server.url, SKIPPED)}
    finally:
        server.stop()
    missing = set(sender.acked) - stored
    assert not missing, f"{len(missing)} acknowledged events are not on the bus"


# --------------------------------------------------------------- lake full


def test_lake_full_loader_pauses_and_resumes_exactly_once(
    small_fs: SmallFs,
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
) -> None:
    gw = start_gateway(**FAST)
    lake = small_fs.path / "lake"
    acked: list[Key] = []

    def send(n: int) -> None:
        for _ in range(n):
            events = [skipped() for _ in range(25)]
            r = httpx.post(
                gw.base + "/v1/events", content=msgspec.json.encode(events), headers=BATCH
            )
            assert r.status_code == 200, r.text
            acked.extend(keys_of_events(events))

    # A backlog three minutes old, on the bus before the loader's first start: its
    # bucket and the idle ones after it close within seconds, with manifests.
    old = [skipped() for _ in range(30)]
    publish_events(nats_server.url, old, minute_start(time.time()) - dt.timedelta(minutes=3))
    acked.extend(keys_of_events(old))
    metrics_port = free_port()
    loader = start_loader(data_dir=str(small_fs.path), loader_metrics_port=metrics_port, **FAST)
    send(4)
    wait_until(lambda: len(lake_keys(lake, SKIPPED)) == len(acked), 15, "the lake caught up")
    wait_until(lambda: manifests(lake), 15, "the backlog bucket closed")

    small_fs.fill()
    send(4)
    # A resend of acknowledged events while full: dedup still drops them.
    resend = [skipped(id=i, source=s) for s, i in acked[:10]]
    r = httpx.post(gw.base + "/v1/events", content=msgspec.json.encode(resend), headers=BATCH)
    assert r.status_code == 200
    log_path = loader.log_path
    wait_until(lambda: "lake filesystem full, pausing" in log_path.read_text(), 15, "the pause")
    retries = 'hourglass_loader_lake_full_retries_total{stream="music.SongSkipped"}'
    wait_until(lambda: metric_total(metrics_port, retries) >= 2, 15, "a retry of the same flush")
    assert metric_total(metrics_port, "hourglass_loader_lake_full") == 1
    assert loader.alive()
    # Nothing half-written is visible to readers; temp files (if any) end in .partial.
    for path in lake.rglob("*"):
        if path.name.startswith(".tmp-"):
            assert path.name.endswith(".partial"), path
        elif path.suffix == ".parquet":
            pq.ParquetFile(path)

    small_fs.unfill()
    wait_until(lambda: "resuming" in log_path.read_text(), 15, "the loader resumed")
    wait_until(lambda: len(lake_keys(lake, SKIPPED)) >= len(acked), 15, "the lake caught up")
    time.sleep(1.0)  # a second flush would show a double write
    assert_exactly_once(lake_keys(lake, SKIPPED), acked)
    assert_exactly_once(lake_keys_duckdb(lake, SKIPPED), acked)
    for folder, manifest in manifests(lake).items():
        assert_manifest_matches(folder, manifest)
    assert metric_total(metrics_port, "hourglass_loader_lake_full") == 0

    log = log_path.read_text()
    assert log.count("lake filesystem full, pausing") == 1, log[-3000:]
    assert "Traceback" not in log and "stream loader failed" not in log, log[-3000:]
    assert loader.alive()


# ------------------------------------------- the retry itself, with a fake clock


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


def _messages(first_seq: int, events: list[dict[str, Any]], at: dt.datetime) -> BusMessage:
    return BusMessage(first_seq, bus_lines(events, at)[SKIPPED])


def _marker(seq: int, at: dt.datetime) -> BusMessage:
    return BusMessage(seq, b"", ("gw-test", int(at.timestamp() * 1_000_000)))


async def test_failed_checkpoint_and_manifest_writes_are_retried_exactly(
    small_fs: SmallFs,
) -> None:
    schema = next(s for s in REGISTRY if s.type_name == SKIPPED)
    start = minute_start(time.time()) - dt.timedelta(minutes=5)
    clock = Clock(start.timestamp() + 30)
    root = small_fs.path

    def new_loader() -> StreamLoader:
        return StreamLoader(
            SKIPPED,
            LakeSchema(schema),
            lake=root / "lake",
            checkpoints=FileCheckpoints(root / "loader" / f"{SKIPPED}.json"),
            quarantine=root / "loader" / "quarantine" / SKIPPED,
            width_s=60,
            window_s=3600,
            clock=clock,
        )

    metrics = LoaderMetrics()
    space = LakeSpace(root / "lake", metrics, retry_s=0.05)
    s = Stream(SKIPPED, "HG_x", "hg.ev.x", new_loader(), root / "legacy.json", 1 << 30)
    store = FileCheckpoints(root / "loader" / f"{SKIPPED}.json")
    s.loader.recover()
    folder = bucket_dir(root / "lake", SKIPPED, start, 60)

    first = [skipped() for _ in range(10)]
    s.loader.process([_messages(1, first, start + dt.timedelta(seconds=5))])
    assert await until_stored(s, space, "flush", s.loader.flush) == 1

    # Room for the next Parquet file but not for the checkpoint after it.
    second = [skipped() for _ in range(5)]
    duplicate = [skipped(id=first[0]["id"], source=first[0]["source"])]
    s.loader.process(
        [
            _messages(2, second + duplicate, start + dt.timedelta(seconds=10)),
            _marker(3, start + dt.timedelta(seconds=70)),
        ]
    )
    rows = s.loader.open_buckets()[int(start.timestamp())]
    probe = small_fs.path.parent / "probe.parquet"
    write_part(rows, probe)
    small_fs.fill(leave=-(-probe.stat().st_size // 4096) * 4096)

    flushing = asyncio.ensure_future(until_stored(s, space, "flush", s.loader.flush))
    await wait_for_async(
        lambda: (sample(metrics, "hourglass_loader_lake_full_retries_total") or 0) >= 2
    )
    assert (folder / f".tmp-e0-{part_name(2, 3)}.staged").exists(), "the part staged, not saved"
    assert not (folder / part_name(2, 3)).exists(), "nothing visible before the save"
    assert store.load().state.committed_seq == 1
    assert s.loader.state.committed_seq == 1, "the checkpoint in memory was put back"
    assert s.loader.state.buckets == {}, "counts are not merged twice"
    assert [p.name for p in root.rglob(".tmp-*")] == [f".tmp-e0-{part_name(2, 3)}.staged"], (
        "the failed checkpoint's temp file was removed"
    )
    assert space.since is not None and sample(metrics, "hourglass_loader_lake_full") == 1

    small_fs.unfill()
    assert await flushing == 3
    assert space.since is None and sample(metrics, "hourglass_loader_lake_full") == 0
    state = store.load().state
    assert state.committed_seq == 3
    assert (folder / part_name(2, 3)).exists() and not [p for p in root.rglob(".tmp-*")]
    assert state.buckets[int(start.timestamp())].duplicates == 1
    assert s.loader.stats.rows_written == 15 and s.loader.stats.files_written == 2

    # The bucket's end has passed every live gateway's marker: closing it fails, then works.
    clock.now = start.timestamp() + 75
    small_fs.fill()
    assert (
        await stored_once(s, space, "close", lambda: s.loader.close_ready({"gw-test"}, True)) == []
    )
    assert not (folder / "_SUCCESS.json").exists()
    assert s.loader.state.next_close == int(start.timestamp())
    assert s.loader.state.buckets[int(start.timestamp())].duplicates == 1, "counts kept"
    small_fs.unfill()
    done = await stored_once(s, space, "close", lambda: s.loader.close_ready({"gw-test"}, True))
    assert done and [m.bucket_start for m in done[0]] == [start]
    manifest = done[0][0]
    assert (manifest.count, manifest.duplicates_dropped) == (15, 1)
    assert_manifest_matches(folder, manifest)
    assert s.loader.stats.closed == 1

    # A restart sees exactly this: nothing to delete, the same rows, the bucket closed.
    again = new_loader()
    again.recover()
    assert again.state.committed_seq == 3
    assert again.state.next_close == int(start.timestamp()) + 60
    assert_exactly_once(lake_keys(root / "lake", SKIPPED), keys_of_events(first + second))


def sample(metrics: LoaderMetrics, name: str) -> float | None:
    labels = {} if name == "hourglass_loader_lake_full" else {"stream": SKIPPED}
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


async def wait_for_async(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
