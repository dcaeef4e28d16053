"""``hourglass up`` as a user runs it: a real supervisor process with real children."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from hourglass.bus.embedded import free_port
from tests.integration.support import events_of, skipped

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SKIPPED = "music.SongSkipped"
BATCH = {"content-type": "application/cloudevents-batch+json"}


# --- processes, seen through /proc -------------------------------------------------------


def _proc_info(pid: int) -> tuple[int, str, list[str]] | None:
    """(ppid, state, argv) of a live process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], [a.decode() for a in argv if a]


def _alive(pid: int) -> bool:
    info = _proc_info(pid)
    return info is not None and info[1] != "Z"


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def children_of(pid: int) -> dict[int, list[str]]:
    out = {}
    for child in _all_pids():
        info = _proc_info(child)
        if info is not None and info[0] == pid and info[1] != "Z" and info[2]:
            out[child] = info[2]
    return out


def nats_servers_of(data_dir: Path) -> list[int]:
    """Live nats-server processes running the store of ``data_dir``."""
    conf = str((data_dir / "bus" / "nats.conf").resolve())
    found = []
    for pid in _all_pids():
        info = _proc_info(pid)
        if info is None or info[1] == "Z" or not info[2]:
            continue
        if info[2][0].endswith("nats-server") and conf in info[2]:
            found.append(pid)
    return found


def wait_for(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- one `hourglass up` ------------------------------------------------------------------


@dataclass
class Up:
    data_dir: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bus_url(self) -> str:
        return f"nats://127.0.0.1:{int((self.data_dir / 'bus' / 'port').read_text())}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        try:
            return httpx.get(self.base + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            assert self.proc.poll() is None, f"up exited {self.proc.returncode}\n{self.output()}"
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in {timeout}s\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def child(self, kind: str) -> int:
        """The pid of the one live child of ``kind`` ("nats-server" or "gateway")."""
        found = [
            pid
            for pid, argv in children_of(self.proc.pid).items()
            if (argv[0].endswith("nats-server") if kind == "nats-server" else argv[-1] == kind)
        ]
        assert len(found) == 1, (kind, children_of(self.proc.pid))
        return found[0]

    def try_child(self, kind: str) -> int | None:
        try:
            return self.child(kind)
        except AssertionError:
            return None

    def send(self, *events: dict[str, object]) -> httpx.Response:
        """What ``curl -H 'content-type: application/cloudevents-batch+json' -d @batch`` does."""
        return httpx.post(
            self.base + "/v1/events",
            content=msgspec.json.encode(list(events)),
            headers=BATCH,
            timeout=30,
        )

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


StartUp = Callable[..., Up]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[StartUp]:
    """Start ``hourglass up`` processes; every one (and its children) is gone at the end.

    Each runs in its own process group, as a shell starts a job, so a test can
    ``kill -9`` the whole group the way a user would.
    """
    started: list[tuple[Up, set[int]]] = []

    def start(data_dir: Path, *extra: str, port: int | None = None, ready: bool = True) -> Up:
        port = port or free_port()
        log_path = tmp_path / f"up-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hourglass",
                    "up",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(port),
                    # not 8090: another test's `up` may hold it (make test runs two workers)
                    "--dashboard-port",
                    str(free_port()),
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=tmp_path,
                process_group=0,
            )
        up = Up(data_dir, port, log_path, proc)
        started.append((up, set()))
        if ready:
            up.wait_ready(30)
            # The gateway answers before the supervisor has finished starting: wait for it too.
            wait_for("the supervisor's banner", lambda: "Hourglass is up" in up.output(), 10)
            started[-1][1].update(children_of(proc.pid))
        return up

    try:
        yield start
    finally:
        pids: set[int] = set()
        for up, seen in started:
            pids |= seen | set(children_of(up.proc.pid))
            try:
                up.terminate()
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait(10)
        # Children may take a moment to finish after their supervisor is gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_alive, pids)):
            time.sleep(0.05)
        for up, _ in started:
            pids |= set(nats_servers_of(up.data_dir))
        leftovers = []
        for pid in sorted(pids):
            if _alive(pid):
                leftovers.append((pid, _proc_info(pid)))
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes outlived their `hourglass up`: {leftovers}"


# --- tests -------------------------------------------------------------------------------


def test_up_becomes_ready_and_accepts_an_event(start_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    started = time.monotonic()
    up = start_up(data)
    assert time.monotonic() - started < 30
    assert "Hourglass is up" in up.output()
    assert up.base in up.output()

    e = skipped()
    r = up.send(e)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "rejected": []}
    assert [x["id"] for x in events_of(up.bus_url, SKIPPED)] == [e["id"]]
    # The embedded bus keeps its store under the data folder, and only one server runs it.
    assert (data / "bus" / "store").is_dir()
    assert nats_servers_of(data) == [up.child("nats-server")]


def test_killed_bus_is_restarted_and_keeps_acknowledged_events(
    start_up: StartUp, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    up = start_up(data)
    before = skipped()
    assert up.send(before).status_code == 200
    bus_pid, gateway_pid = up.child("nats-server"), up.child("gateway")

    os.kill(bus_pid, signal.SIGKILL)
    new_bus = wait_for(
        "a new nats-server", lambda: up.try_child("nats-server") not in (None, bus_pid), 20
    )
    assert new_bus
    started = time.monotonic()
    up.wait_ready(20)

    # /readyz may still say 200 for a moment after the kill; until the gateway is back on
    # the bus a client may only be told to retry (503 + Retry-After), never lose an event.
    after = skipped()
    deadline = started + 20
    while (r := up.send(after)).status_code != 200 and time.monotonic() < deadline:
        assert r.status_code == 503 and "retry-after" in r.headers, (r.status_code, r.text)
        time.sleep(0.1)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{up.output()}"

    ids = [x["id"] for x in events_of(up.bus_url, SKIPPED)]
    assert ids == [before["id"], after["id"]]
    # The gateway reconnected: it was not restarted.
    assert up.child("gateway") == gateway_pid
    assert not _alive(bus_pid)
    assert nats_servers_of(data) == [up.child("nats-server")]
    assert "restarting" in up.output()


def test_killed_gateway_is_restarted(start_up: StartUp, tmp_path: Path) -> None:
    up = start_up(tmp_path / "data")
    bus_pid, gateway_pid = up.child("nats-server"), up.child("gateway")
    os.kill(gateway_pid, signal.SIGKILL)
    wait_for("a new gateway", lambda: up.try_child("gateway") not in (None, gateway_pid), 20)
    up.wait_ready(20)
    e = skipped()
    r = up.send(e)
    assert r.status_code == 200, r.text
    assert [x["id"] for x in events_of(up.bus_url, SKIPPED)] == [e["id"]]
    assert up.child("nats-server") == bus_pid
    assert not _alive(gateway_pid)


def test_second_up_on_same_data_dir_is_refused(start_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_up(data)
    bus_pid = first.child("nats-server")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hourglass",
            "up",
            "--data-dir",
            str(data),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0, done
    assert "in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # The first one is untouched.
    assert first.ready()
    assert first.child("nats-server") == bus_pid
    assert nats_servers_of(data) == [bus_pid]
    assert first.send(skipped()).status_code == 200


def test_sigterm_stops_everything_and_the_store_persists(start_up: StartUp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = start_up(data)
    sent = [skipped() for _ in range(3)]
    assert up.send(*sent).json() == {"accepted": 3, "rejected": []}
    children = set(children_of(up.proc.pid))
    assert len(children) == 4, children_of(up.proc.pid)  # nats-server, gateway, loader, dashboard

    started = time.monotonic()
    assert up.terminate(15) == 0, up.output()
    assert time.monotonic() - started < 15
    assert "Hourglass stopped." in up.output()
    wait_for("the children to exit", lambda: not any(_alive(p) for p in children), 5)
    assert nats_servers_of(data) == []

    again = start_up(data, port=up.port)
    stored = [x["id"] for x in events_of(again.bus_url, SKIPPED)]
    assert stored == [e["id"] for e in sent]
    late = skipped()
    assert again.send(late).status_code == 200
    assert [x["id"] for x in events_of(again.bus_url, SKIPPED)] == stored + [late["id"]]


def test_killed_supervisor_leaves_nothing_behind(start_up: StartUp, tmp_path: Path) -> None:
    """``kill -9`` of ``up`` itself: its children go too, and the store can be reopened."""
    data = tmp_path / "data"
    up = start_up(data)
    e = skipped()
    assert up.send(e).status_code == 200
    children = set(children_of(up.proc.pid))
    up.proc.kill()
    up.proc.wait(10)
    wait_for("the orphaned children to exit", lambda: not any(_alive(p) for p in children), 15)
    assert nats_servers_of(data) == []
    again = start_up(data)
    assert [x["id"] for x in events_of(again.bus_url, SKIPPED)] == [e["id"]]


def test_sigterm_during_startup_stops_cleanly(start_up: StartUp, tmp_path: Path) -> None:
    """A SIGTERM that arrives while ``up`` is still starting is a clean stop too."""
    data = tmp_path / "data"
    up = start_up(data, ready=False)
    # The bus is running and the supervisor is waiting for the gateway to be ready.
    wait_for("the embedded bus", lambda: up.try_child("nats-server"), 20)
    children = set(children_of(up.proc.pid))
    assert up.terminate(15) == 0, up.output()
    assert "Hourglass stopped." in up.output()
    wait_for("the children to exit", lambda: not any(_alive(p) for p in children), 10)
    assert nats_servers_of(data) == []


_ACCEPTED = re.compile(r"accepted ([\d,]+) events.*rejected ([\d,]+)")


def test_demo_prints_growing_accepted_counts(start_up: StartUp, tmp_path: Path) -> None:
    up = start_up(tmp_path / "data", "--demo")

    def counts() -> list[tuple[int, int]]:
        return [
            (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")))
            for m in _ACCEPTED.finditer(up.output())
        ]

    wait_for("two demo progress lines", lambda: len(counts()) >= 2, 12)
    assert up.terminate(15) == 0, up.output()
    seen = counts()
    accepted = [a for a, _ in seen]
    assert accepted[0] > 0, up.output()
    assert accepted == sorted(set(accepted)), f"not growing: {accepted}"
    assert all(rejected == 0 for _, rejected in seen), up.output()
    assert "gateway answered" not in up.output()
