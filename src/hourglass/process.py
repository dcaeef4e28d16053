"""Supervised child processes: start, restart when they die, stop on exit.

Children run in their own session, so a terminal's Ctrl-C reaches only the
supervisor, which stops them in order (gateway before bus).  They get
``PR_SET_PDEATHSIG`` (Linux) so that a supervisor killed with ``kill -9`` does not
leave them running on their own: the kernel sends them SIGTERM and they shut
down cleanly, all at once and in no order, each finishing its work first (a
gateway its requests in flight, the loader its flush), which can take seconds.
A supervisor started meanwhile on the same folder must not run beside them:
:class:`RunLock` makes it wait until the last one is gone.

A child inherits exactly ``pass_fds``: uvloop (the loop ``hourglass`` runs on)
ignores ``close_fds`` and hands every *inheritable* descriptor to every child,
so the supervisor opens nothing inheritable; ``pass_fds`` marks a descriptor
inheritable only while that one child is spawned.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hourglass import log
from hourglass.exceptions import ConfigError

logger = log.get("hourglass.process")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Runs in the child between fork and exec: ``sig`` when ``parent`` dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # it died before prctl: no signal will come
            os._exit(1)


def clean_environ() -> dict[str, str]:
    """This environment without Hourglass settings or crash points, for a child
    that must see exactly the settings its starter hands it (bench, chaos)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HOURGLASS_")}


def spawn_logged(
    argv: Sequence[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """A child of a bench or chaos run: its own session, killed (SIGKILL) with its
    starter, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=functools.partial(_die_with_parent, os.getpid(), signal.SIGKILL),  # noqa: PLW1509 - the starters run no threads that hold locks
            start_new_session=True,  # a Ctrl-C reaches only the starter, which stops it
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    return proc.poll()


def log_tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Supervised:
    """One child process kept running until :meth:`stop`.

    ``before_start`` runs before every (re)start, e.g. to rewrite a config file.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        before_start: Callable[[], None] | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.pass_fds = tuple(pass_fds)
        self.before_start = before_start
        self.max_backoff = max_backoff
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def _spawn(self) -> None:
        if self.before_start is not None:
            self.before_start()
        die_with_parent = functools.partial(_die_with_parent, os.getpid())
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            pass_fds=self.pass_fds,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads hold locks here
            stdin=asyncio.subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal reaches only the supervisor,
            # which then stops the children in order.
            start_new_session=True,
        )
        logger.info("started", extra={"child": self.name, "pid": self.proc.pid})
        self.started.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")

    async def _run(self) -> None:
        backoff = 0.25
        while not self._stopping:
            started = time.monotonic()
            await self._spawn()
            assert self.proc is not None
            code = await self.proc.wait()
            if time.monotonic() - started > 30:
                backoff = 0.25  # it ran well: this is a new failure, not a crash loop
            if self._stopping:
                return
            self.restarts += 1
            logger.warning(
                "child exited, restarting",
                extra={"child": self.name, "code": code, "restarts": self.restarts},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                logger.warning("child did not stop, killing", extra={"child": self.name})
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class RunLock:
    """Whether processes of a run of ``hourglass up`` live on a data folder.

    Two ``flock`` s, which the kernel drops when the last descriptor of each
    closes, so a crash never leaves a stale lock and no pid is ever trusted::

        <data-dir>/up.lock    held by the supervisor alone
        <data-dir>/run.lock   held by the supervisor and every child (in pass_fds)

    ``up.lock`` taken: another supervisor runs there, refused at once.  Only
    ``run.lock`` taken: the supervisor of the previous run is gone (``kill -9``)
    but some of its children are still finishing.  They hold the gateway port
    (a new gateway could not bind it, or a client would be answered by a
    dying one), the bus store and the lake, so :meth:`acquire` waits for them,
    with a bound and a log line: they got SIGTERM and stop on their own.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self._up: int | None = None
        self._run: int | None = None

    @property
    def fd(self) -> int:
        """The descriptor every child of this run is to hold: put it in ``pass_fds``."""
        assert self._run is not None, "acquire() first"
        return self._run

    async def acquire(self, timeout: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._up = self._open("up.lock")
            if not _try_lock(self._up):
                holder = (self.folder / "up.lock").read_text().strip() or "unknown"
                raise ConfigError(
                    f"the data folder {self.folder} is in use by a running `hourglass up` "
                    f"({holder}); stop it first or use another --data-dir"
                )
            os.ftruncate(self._up, 0)
            os.write(self._up, f"pid {os.getpid()}".encode())
            self._run = self._open("run.lock")
            if not _try_lock(self._run):
                await self._wait_for_previous_run(self._run, timeout)
        except BaseException:
            self.release()
            raise

    async def _wait_for_previous_run(self, fd: int, timeout: float) -> None:
        path = self.folder / "run.lock"
        logger.warning(
            "processes of the previous run of this data folder are still stopping; "
            "waiting for them to exit",
            extra={"lock": str(path), "timeout_s": timeout},
        )
        started = time.monotonic()
        while not _try_lock(fd):
            if time.monotonic() - started > timeout:
                raise ConfigError(
                    f"processes of a previous `hourglass up` on {self.folder} still run "
                    f"after {timeout:g}s (`fuser -v {path}` lists them); stop them first"
                )
            await asyncio.sleep(0.05)
        logger.info(
            "the previous run has exited", extra={"waited_s": round(time.monotonic() - started, 2)}
        )

    def _open(self, name: str) -> int:
        return os.open(self.folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def release(self) -> None:
        for fd in (self._run, self._up):
            if fd is not None:
                os.close(fd)
        self._up = self._run = None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
