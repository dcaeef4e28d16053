"""``hourglass tail`` end to end: real nats-server, gateway and loader; the lake read
with DuckDB.

Two files are written line by line while two tailer processes follow them: ``a.log``
(``--type``: data lines, a few full events) is rotated by rename, ``b.log`` (full
events, some without id) by copy-truncate.  The tailers are killed with SIGKILL
mid-stream, once during a rotation and once (crash point) after the gateway answered
but before the checkpoint; malformed and schema-invalid lines are mixed in.  In the
end every valid line is in the lake exactly once, under the id the test expects,
and every malformed or rejected line is in the failed-events stream and named on
stderr with its file and line number.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from hourglass.bus.embedded import free_port
from hourglass.producer.follow import StateDir
from hourglass.producer.tail import MALFORMED_TYPE, file_source
from tests.chaos.conftest import Key, assert_exactly_once, lake_keys_duckdb, wait_until
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import events_of, failed, skipped

pytestmark = pytest.mark.timeout(90)

SKIPPED = "music.SongSkipped"
FAST: dict[str, Any] = {"bucket": "1m", "marker_interval_s": 0.5, "flush_interval_s": 0.5}
TAIL = "import sys; from hourglass.producer.tail import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Log:
    """An NDJSON file the test appends to, knowing the id the tailer must derive."""

    path: Path
    valid: list[Key] = field(default_factory=list)
    malformed: list[tuple[str, bytes, int]] = field(default_factory=list)  # id, raw, line
    rejected: list[tuple[str, int]] = field(default_factory=list)  # id, line
    generation: int = 0
    number: int = 1

    def __post_init__(self) -> None:
        self.file = open(self.path, "ab", buffering=0)

    def write(self, raw: bytes) -> str:
        st = os.fstat(self.file.fileno())
        self.file.write(raw + b"\n")
        self.number += 1
        return f"{st.st_dev}-{st.st_ino}-{self.generation}-{st.st_size}"

    def rename(self, to: str) -> None:
        """Rotate by rename; the writer goes on writing to the old file until ``reopen``."""
        os.rename(self.path, self.path.with_name(to))

    def reopen(self) -> None:
        self.file.close()
        self.file = open(self.path, "ab", buffering=0)
        self.generation += 1
        self.number = 1

    def copy_truncate(self, to: str) -> None:
        shutil.copy(self.path, self.path.with_name(to))
        os.truncate(self.path, 0)
        self.generation += 1
        self.number = 1


def data(n: int, **over: Any) -> dict[str, Any]:
    base = {
        "user_id": str(uuid.uuid4()),
        "track_id": f"t-{n}",
        "skipped_at": "2026-11-26T12:00:00.123Z",
        "position_ms": n,
    }
    return {**base, **over}


def write_a(log: Log, n: int) -> None:
    """Data lines for ``--type``, with full events and malformed lines mixed in."""
    line = log.number
    source = file_source(log.path)
    if n % 37 == 5:
        raw = f"not json {n}".encode()
        log.malformed.append((log.write(raw), raw, line))
    elif n % 53 == 7:
        raw = f"[{n}]".encode()
        log.malformed.append((log.write(raw), raw, line))
    elif n % 61 == 3:
        log.rejected.append((log.write(msgspec.json.encode(data(n, position_ms="x"))), line))
    elif n % 41 == 1:
        event = skipped(source="/tests-a")
        log.write(msgspec.json.encode(event))
        log.valid.append(("/tests-a", event["id"]))
    elif n % 43 == 2:
        event = skipped(source="/tests-a")
        del event["id"]
        log.valid.append(("/tests-a", log.write(msgspec.json.encode(event))))
    else:
        log.valid.append((source, log.write(msgspec.json.encode(data(n)))))


def write_b(log: Log, n: int) -> None:
    """Full events (every 5th without id), malformed lines mixed in; no ``--type``."""
    line = log.number
    if n % 31 == 4:
        raw = msgspec.json.encode(data(n))  # no specversion
        log.malformed.append((log.write(raw), raw, line))
    elif n % 47 == 6:
        raw = b'{"specversion": "1.0", "id": '  # cut short
        log.malformed.append((log.write(raw), raw, line))
    elif n % 59 == 8:
        event = skipped(source="/tests-b", id=f"bad-{n}")
        event["data"]["position_ms"] = "x"
        log.write(msgspec.json.encode(event))
        log.rejected.append((event["id"], line))
    elif n % 5 == 0:
        event = skipped(source="/tests-b")
        del event["id"]
        log.valid.append(("/tests-b", log.write(msgspec.json.encode(event))))
    else:
        event = skipped(source="/tests-b")
        log.write(msgspec.json.encode(event))
        log.valid.append(("/tests-b", event["id"]))


@dataclass
class Tailer:
    path: Path
    args: list[str]
    state: Path
    output: Path
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-c", TAIL, str(self.path), "--state-dir", str(self.state)]

    def start(self, env: dict[str, str] | None = None) -> None:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                self.command() + self.args,
                stdout=out,
                stderr=out,
                env={**os.environ, **(env or {})},
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def once(self) -> int:
        with open(self.output, "ab") as out:
            run = subprocess.run(
                [*self.command(), *self.args, "--once"], stdout=out, stderr=out, timeout=30
            )
        return run.returncode

    def checkpoint(self) -> tuple[int, int, int] | None:
        cp = StateDir(self.state).load(str(self.path))
        return None if cp is None else (cp.dev, cp.ino, cp.offset)

    def wait_caught_up(self) -> None:
        def caught_up() -> bool:
            st = os.stat(self.path)
            return self.checkpoint() == (st.st_dev, st.st_ino, st.st_size)

        wait_until(caught_up, 15, f"the tailer of {self.path.name} to catch up")


def write_many(n: int, *writers: Callable[[int], None]) -> None:
    for i in range(n):
        for write in writers:
            write(i)
        if i % 10 == 0:
            time.sleep(0.02)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Log, Log]]:
    (tmp_path / "logs").mkdir()
    a, b = Log(tmp_path / "logs" / "a.log"), Log(tmp_path / "logs" / "b.log")
    yield a, b
    a.file.close()
    b.file.close()


@pytest.fixture
def tailers(tmp_path: Path) -> Iterator[list[Tailer]]:
    started: list[Tailer] = []
    yield started
    for tailer in started:
        tailer.kill()


def test_tail_rotations_restarts_and_malformed_lines(
    tmp_path: Path,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    files: tuple[Log, Log],
    tailers: list[Tailer],
) -> None:
    gw = start_gateway(**FAST)
    metrics_port = free_port()
    loader = start_loader(loader_metrics_port=metrics_port, **FAST)
    a, b = files
    state = tmp_path / "tail-state"
    url = ["--url", gw.base]
    ta = Tailer(a.path, [*url, "--type", SKIPPED], state, tmp_path / "tail-a.log")
    tb = Tailer(b.path, url, state, tmp_path / "tail-b.log")
    tailers += [ta, tb]
    counter = iter(range(100_000))

    def wa(_: int) -> None:
        write_a(a, next(counter))

    def wb(_: int) -> None:
        write_b(b, next(counter))

    write_many(50, wa, wb)
    ta.start()
    tb.start()
    for tailer in (ta, tb):  # following the first file before anything rotates
        wait_until(lambda t=tailer: (t.checkpoint() or (0, 0, 0))[2] > 0, 15, "a first read")
    write_many(150, wa, wb)

    # rename rotation while the tailer runs; the writer appends to the old file first
    a.rename("a.log.1")
    write_many(5, wa)
    a.reopen()
    write_many(100, wa)
    # copy-truncate while the tailer runs (once it has read everything: copytruncate's
    # own window, where lines written after the copy are lost, is not the tailer's)
    tb.wait_caught_up()
    b.copy_truncate("b.log.1")
    write_many(100, wa, wb)

    # kill -9 both mid-stream; rotate a.log again while its tailer is down
    wait_until(lambda: (ta.checkpoint() or (0, 0))[1] == os.stat(a.path).st_ino, 15, "switch")
    write_many(30, wa, wb)
    ta.kill()
    tb.kill()
    write_many(50, wa, wb)
    a.rename("a.log.2")
    write_many(5, wa)
    a.reopen()
    write_many(50, wa)

    # a crash after the gateway answered, before the checkpoint: re-sent, deduplicated
    ta.start(env={"HOURGLASS_CRASHPOINT": "tail.before_checkpoint:3"})
    tb.start()
    deadline = time.monotonic() + 15
    while ta.proc is not None and ta.proc.poll() is None and time.monotonic() < deadline:
        write_many(10, wa, wb)
        time.sleep(0.2)
    assert ta.proc is not None and ta.proc.wait(1) == -signal.SIGKILL
    ta.start()
    write_many(50, wa, wb)
    tb.wait_caught_up()
    b.copy_truncate("b.log.2")
    write_many(50, wa, wb)

    ta.kill()
    tb.kill()
    write_many(20, wa, wb)
    a.file.write(b'{"user_id": "partial, not terminated yet')  # waits: never sent
    assert ta.once() == 0 and tb.once() == 0

    expected = a.valid + b.valid
    deadline = time.monotonic() + 20
    while len(lake_keys_duckdb(loader.lake, SKIPPED)) < len(expected):
        assert time.monotonic() < deadline, "the loader did not write every row in time"
        time.sleep(0.2)
    time.sleep(1.0)  # a late duplicate would show up now
    assert_exactly_once(lake_keys_duckdb(loader.lake, SKIPPED), expected)
    # The chunk answered before the crash is sent again: onto the type's stream,
    # or, if every line of it was malformed or rejected (a chunk may be a single
    # line), onto the failed stream.
    on_bus = len(events_of(gw.settings.bus, SKIPPED)) + len(failed(gw.settings.bus))
    every_line = len(expected) + sum(len(x.malformed) + len(x.rejected) for x in (a, b))
    assert on_bus > every_line, "the crash before a checkpoint should have re-sent lines"
    # Lines the tailer gives ids travel with their line numbers: settled by sequence.
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert "hourglass_loader_dedup_sequenced_events_total" in metrics
    sequenced = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("hourglass_loader_dedup_sequenced_events_total{")
    ]
    assert sum(sequenced) >= len(a.valid), sequenced
    check_failed_stream(failed(gw.settings.bus), a, b)
    check_reports(ta.output.read_text() + tb.output.read_text(), a, b)


def check_failed_stream(records: list[dict[str, Any]], a: Log, b: Log) -> None:
    """Each malformed line is there under its file's source and its derived id."""
    assert a.malformed and b.malformed and a.rejected and b.rejected
    by_id = {(r.get("source"), r.get("id")): r for r in records}
    for log, event_type in ((a, SKIPPED), (b, MALFORMED_TYPE)):
        for event_id, raw, _ in log.malformed:
            record = by_id[(file_source(log.path), event_id)]
            assert record["type"] == event_type
            if "body" in record:  # not JSON: kept raw by the gateway
                assert base64.b64decode(record["body"]) == raw
            else:  # JSON but not an event: kept as the data of one
                assert record["event"]["data"] == msgspec.json.decode(raw)
    rejected = [(file_source(a.path), i) for i, _ in a.rejected]
    for key in rejected + [("/tests-b", i) for i, _ in b.rejected]:
        assert "position_ms" in by_id[key]["reason"]


def check_reports(said: str, a: Log, b: Log) -> None:
    """Malformed and rejected lines are named on stderr by file and line."""
    for log in (a, b):
        for _, _, line in log.malformed:
            assert f"{log.path}:{line}: malformed line" in said
        for _, line in log.rejected:
            assert f"{log.path}:{line}: rejected: " in said
