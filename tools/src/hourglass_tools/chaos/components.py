"""The processes a chaos run kills and pauses, each under the harness's own control.

Not :class:`hourglass.process.Supervised`: that one restarts a child on its own,
and here the fault schedule decides when a process dies, how long it stays
down and when it comes back.  Each child:

* gets ``PR_SET_PDEATHSIG=SIGKILL``, so a harness that is itself killed (a
  test timeout) leaves nothing running;
* writes stdout and stderr to ``logs/<name>.log``, appended across restarts;
* is always reaped: :meth:`Component.kill` waits for the process to be gone,
  which is also what lets a restarted gateway bind the same port again.

A paused (SIGSTOP) process gets SIGCONT before SIGTERM, so a clean stop never
waits on a frozen process.  A fault's SIGKILL is sent without SIGCONT: the
kernel delivers it to a stopped process at once, so the process dies frozen,
without running another instruction.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from hourglass.process import clean_environ, log_tail, spawn_logged


class Component:
    """One restartable child process.

    ``argv`` is a callable so a restart can pick up new arguments (a producer
    continues after the last id it logged).  ``generation`` counts starts, so a
    delayed SIGCONT never reaches a process started after the pause.
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[], Sequence[str]],
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = {**clean_environ(), **(env or {})}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.paused = False
        self.expected_down = False  # killed on purpose, restart pending

    def start(self) -> None:
        self.proc = spawn_logged(self.argv(), self.env, self.log_path)
        self.generation += 1
        self.paused = False
        self.expected_down = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def kill(self) -> None:
        """kill -9, and wait until the process is gone."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.paused = False

    def pause(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive() and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.alive():
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)
