"""Supervised child processes: start, restart when they die, stop on exit.

Children run in their own session, so a terminal's Ctrl-C reaches only the
supervisor, which stops them in order (gateway before bus).  They get
``PR_SET_PDEATHSIG`` (Linux) so that a supervisor killed with ``kill -9`` does not
leave them running on their own: the kernel sends them SIGTERM and they shut
down cleanly.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from hourglass import log

logger = log.get("hourglass.process")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            pass_fds=self.pass_fds,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads hold locks here
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
