"""``kill -9`` of ``hourglass up``, restarted at once: the new run serves every request.

After ``kill -9`` of the supervisor its children get SIGTERM (``PR_SET_PDEATHSIG``)
and drain for a while.  A child holding a copy of a listening socket keeps the
port in LISTEN although it never accepts: connections queue there and are reset
when it exits, and the new run cannot bind the port meanwhile.  So only the
gateways (and the supervisor, which hands the sockets down) may hold them, and
a new run starts only once every process of the previous one is gone.

Which gateway served a request is read off the bus: every bus message carries
``Nats-Msg-Id: <gateway id>-<n>``, and each gateway process logs its id.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from hourglass.bus.jetstream import MSG_ID, stream_name
from tests.integration import test_up
from tests.integration.support import skipped
from tests.integration.test_up import SKIPPED, StartUp, Up, _alive, children_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

start_up = test_up.start_up  # the fixture: `hourglass up` processes, all stopped at the end

REQUESTS = 200


def listening_sockets(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def sockets_held(pid: int, inodes: set[int]) -> set[int]:
    """Which of ``inodes`` process ``pid`` has open."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            held.add(int(target[8:-1]))
    return held


def gateway_ids(up: Up) -> set[str]:
    return set(re.findall(r'"gateway listening" gateway=(gw-[0-9a-f]+)', up.output()))


def served_by(url: str) -> dict[str, str]:
    """Event id -> id of the gateway that published it, for every SongSkipped event."""

    async def run() -> dict[str, str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            name = stream_name(SKIPPED)
            info = await js.stream_info(name)
            out: dict[str, str] = {}
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                headers = msg.headers or {}
                if headers.get("Hg-Kind", "batch") != "batch":
                    continue
                gateway = headers[MSG_ID].rsplit("-", 1)[0]
                for line in (msg.data or b"").splitlines():
                    out[msgspec.json.decode(line)["id"]] = gateway
            return out
        finally:
            await nc.close()

    return asyncio.run(run())


class Traffic:
    """Batches posted over fresh connections from a few threads until :meth:`stop`.

    It keeps the gateways of a run busy up to the moment it is killed, so they
    have requests to finish and queued connections to refuse.  Errors are
    expected once the run is gone; what was acknowledged must stay.
    """

    def __init__(self, base: str, threads: int = 4) -> None:
        self.base = base
        self.acked: list[str] = []  # ids of the events answered 200
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, daemon=True) for _ in range(threads)]

    def _post(self) -> None:
        while not self._stop.is_set():
            batch = [skipped() for _ in range(50)]
            try:
                r = httpx.post(
                    self.base + "/v1/events",
                    content=msgspec.json.encode(batch),
                    headers={"content-type": "application/cloudevents-batch+json"},
                    timeout=10,
                )
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and r.json()["accepted"] == len(batch):
                self.acked.extend(e["id"] for e in batch)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_only_the_gateways_hold_the_port(start_up: StartUp, tmp_path: Path, workers: int) -> None:
    """Each gateway holds its own listening socket; the bus and the loader hold none."""
    up = start_up(tmp_path / "data", "--workers", str(workers))
    inodes = listening_sockets(up.port)
    assert len(inodes) == workers, inodes
    assert sockets_held(up.proc.pid, inodes) == inodes
    gateways: list[set[int]] = []
    for pid, argv in children_of(up.proc.pid).items():
        held = sockets_held(pid, inodes)
        if argv[-1] == "gateway":
            gateways.append(held)
        else:
            assert not held, f"{argv} holds the gateway port"
    assert sorted(map(len, gateways)) == [1] * workers, gateways
    assert set().union(*gateways) == inodes


@pytest.mark.parametrize("workers", [1, 2])
def test_restart_after_kill_9_serves_every_request(
    start_up: StartUp, tmp_path: Path, workers: int
) -> None:
    started = time.monotonic()
    data = tmp_path / "data"
    old = start_up(data, "--workers", str(workers))
    old_run = set(children_of(old.proc.pid))
    assert len(old_run) == workers + 3, children_of(old.proc.pid)  # bus, loader, dashboard

    with Traffic(old.base) as traffic:
        wait_for("traffic to the old run", lambda: len(traffic.acked) >= 250, 15)
        os.killpg(old.proc.pid, signal.SIGKILL)  # the whole group, as `kill -9 -<pgid>`
        new = start_up(data, "--workers", str(workers), port=old.port, ready=False)
    old.proc.wait(10)

    wait_for(
        "the new run to report ready",
        lambda: new.proc.poll() is not None or "Hourglass is up" in new.output(),
        40,
    )
    assert new.proc.poll() is None, f"the new run exited\n{new.output()[-3000:]}"
    still = [pid for pid in old_run if _alive(pid)]
    assert not still, f"the new run reported ready while {still} of the old run still ran"
    assert new.ready()

    errors: list[str] = []
    sent: list[str] = []
    for _ in range(REQUESTS):
        e = skipped()
        try:
            r = new.send(e)  # a new client, so a new connection, each time
        except httpx.TransportError as exc:
            errors.append(repr(exc))
            continue
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json() == {"accepted": 1, "rejected": []}
        sent.append(e["id"])
    assert not errors, f"{len(errors)} of {REQUESTS} requests failed: {errors[:5]}"

    gateways = served_by(new.bus_url)
    ours = gateway_ids(new)
    assert len(ours) == workers, new.output()
    strangers = {gateways.get(i) for i in sent} - ours
    assert not strangers, f"served by {strangers}, not by the new run's {ours}"
    lost = set(traffic.acked) - set(gateways)
    assert not lost, f"{len(lost)} events acknowledged by the old run are not on the bus"
    assert time.monotonic() - started < 60


def test_up_waits_for_the_processes_of_a_previous_run(start_up: StartUp, tmp_path: Path) -> None:
    """A process of a killed run still holds the run lock: the new run waits, and says so."""
    data = tmp_path / "data"
    data.mkdir()
    fd = os.open(data / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a straggler of a killed run holds
        up = start_up(data, ready=False)
        wait_for("the waiting line", lambda: "previous run" in up.output(), 20)
        time.sleep(1.0)
        assert up.proc.poll() is None, up.output()
        assert "Hourglass is up" not in up.output()
        assert not listening_sockets(up.port), "listening while the previous run is alive"
    finally:
        os.close(fd)
    wait_for("the banner", lambda: "Hourglass is up" in up.output(), 30)
    assert up.send(skipped()).status_code == 200
