"""The processes a bench run starts, and what it reads about them.

Children run in their own session with ``PR_SET_PDEATHSIG`` (SIGKILL), so a
bench that is itself killed leaves nothing behind; every path out of a run
stops them (SIGTERM, then SIGKILL).  Their output goes to ``logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hourglass.process import clean_environ, log_tail, spawn_logged, terminate

_TICK = os.sysconf("SC_CLK_TCK")


class Child:
    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.proc = spawn_logged(argv, {**clean_environ(), **(env or {})}, self.log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        return terminate(self.proc, timeout)

    def log_tail(self, chars: int = 2000) -> str:
        return log_tail(self.log_path, chars)


def hourglass_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "hourglass", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, what: str, child: Child | None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            tail = child.log_tail() if child is not None else ""
            raise RuntimeError(f"{what} not within {timeout:.0f} s\n{tail}")
        time.sleep(0.1)


def _status_mib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM: the peak resident set size of a live process."""
    return _status_mib(pid, "VmHWM:")


def rss_mib(pid: int) -> float | None:
    return _status_mib(pid, "VmRSS:")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def du(path: Path) -> float:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return float(total)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def prometheus_values(text: str, name: str) -> dict[str, float]:
    """Samples of metric ``name`` (exact name), keyed by their label text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue
        labels, _, value = rest.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[labels.strip()] = float(value)
    return out


def prometheus_sum(text: str, name: str) -> float:
    return sum(prometheus_values(text, name).values())
