"""The seeded fault schedule, and the timeline of what actually happened.

The schedule is a pure function of the seed: :func:`plan` draws, for each fault
in turn, the gap since the previous one (2–4 s), its kind, its target and how
long it lasts, all from one ``random.Random(seed)``.  Timing does not feed back
into the draws, so the same seed gives the same sequence of faults on any
machine; only the moments the processes happen to be in differ.

Kinds, drawn uniformly:

* ``kill:gateway``, ``kill:loader``, ``kill:nats-server``, ``kill:producer`` —
  SIGKILL, wait until the process is gone, restart after ``down_s`` (0–1.5 s);
* ``pause:gateway``, ``pause:loader`` — SIGSTOP for ``lease_ttl + 1..3`` s, then
  SIGCONT: longer than a lease, so the loader gives up on a paused gateway and
  the paused one comes back with stale receive stamps (skew); a paused loader
  loses its streams' leases, to its standby if it has one, and wakes fenced.

The :class:`Timeline` records every fault, restart, resume and unexpected exit
with its wall-clock time, to ``timeline.log`` as it happens (so a run that is
itself killed still leaves it) and in memory for the failure report.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KILL_TARGETS = ("gateway", "loader", "nats-server", "producer")
PAUSE_TARGETS = ("gateway", "loader")
KINDS = tuple(f"kill:{t}" for t in KILL_TARGETS) + tuple(f"pause:{t}" for t in PAUSE_TARGETS)
GAP_S = (2.0, 4.0)
DOWN_S = (0.0, 1.5)
PAUSE_EXTRA_S = (1.0, 3.0)


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the start of the fault phase
    kind: str  # one of KINDS
    target: str  # the component's name (a producer's own name for kill:producer)
    length_s: float  # down time before the restart, or the pause

    @property
    def action(self) -> str:
        return self.kind.partition(":")[0]


def plan(
    seed: int, producers: list[str], lease_ttl_s: float, loaders: tuple[str, ...] = ("loader",)
) -> Iterator[Fault]:
    """The endless fault sequence of ``seed``; the caller decides when to stop.

    With more than one loader, a loader fault picks one of ``loaders`` (a draw
    that one loader does not make, so its schedules stay as they were)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    at = 0.0
    while True:
        at += rng.uniform(*GAP_S)
        kind = rng.choice(KINDS)
        target = kind.partition(":")[2]
        if target == "producer":
            target = rng.choice(producers)
        elif target == "loader" and len(loaders) > 1:
            target = rng.choice(loaders)
        if kind.startswith("pause:"):
            length = lease_ttl_s + rng.uniform(*PAUSE_EXTRA_S)
        else:
            length = rng.uniform(*DOWN_S)
        yield Fault(round(at, 3), kind, target, round(length, 3))


def clock(wall: float) -> str:
    """``HH:MM:SS.mmmZ`` of a unix time, as the components' logs print it."""
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


@dataclass(frozen=True)
class Entry:
    wall: float  # unix time
    rel_s: float  # seconds since the run started
    what: str  # e.g. "kill:gateway", "restart", "resume", "exited"
    target: str
    detail: str = ""

    def line(self) -> str:
        stamp = clock(self.wall)
        text = f"{stamp} +{self.rel_s:7.2f}s  {self.what:<18} {self.target}"
        return f"{text}  {self.detail}" if self.detail else text


class Timeline:
    def __init__(self, path: Path, started: float | None = None) -> None:
        self.path = path
        self.started = time.time() if started is None else started
        self.entries: list[Entry] = []

    def add(self, what: str, target: str, detail: str = "") -> Entry:
        now = time.time()
        entry = Entry(now, now - self.started, what, target, detail)
        self.entries.append(entry)
        with open(self.path, "a") as f:
            f.write(entry.line() + "\n")
        return entry
