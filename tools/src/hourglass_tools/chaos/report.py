"""What a chaos run found, as a table a person reads and a test asserts on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hourglass_tools.chaos.schedule import KINDS, Entry, clock
from hourglass_tools.chaos.verify import Verdict

SHOWN = 20  # ids printed per kind of failure


@dataclass
class ChaosReport:
    seed: int
    duration_s: float
    folder: str
    producers: dict[str, int]  # kind -> how many
    faults: Counter[str] = field(default_factory=Counter)
    acknowledged_by_kind: Counter[str] = field(default_factory=Counter)
    verdict: Verdict = field(default_factory=Verdict)
    timeline: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the harness's own findings
    unexpected_exits: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.problems

    def table(self) -> str:
        v = self.verdict
        delay = "-" if v.max_close_delay_s is None else f"{v.max_close_delay_s:.1f} s"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.producers.items()))
        by_kind = ", ".join(f"{k} {n}" for k, n in sorted(self.acknowledged_by_kind.items()))
        rows: list[tuple[str, object]] = [("faults injected", self.faults_injected)]
        rows += [(f"  {kind}", self.faults.get(kind, 0)) for kind in KINDS]
        rows += [
            ("events acknowledged", f"{v.acknowledged}  ({by_kind})"),
            ("rows in the lake", v.lake_rows),
            ("lost", len(v.lost)),
            ("duplicated", len(v.duplicated)),
            ("delivered, never acknowledged", v.unacknowledged),
            ("phantom (never sent)", len(v.phantom)),
            ("buckets closed", v.buckets_closed),
            ("max close delay", delay),
            ("manifest mismatches", len(v.manifest_problems)),
            ("temp files left", len(v.temp_files)),
            ("skewed / duplicates dropped", f"{v.skewed} / {v.duplicates_dropped}"),
            ("rows in open buckets", v.rows_in_open_buckets),
            ("unexpected exits", len(self.unexpected_exits)),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        head = (
            f"hourglass chaos: seed {self.seed}, {self.duration_s:.0f} s of faults, "
            f"producers {kinds}, {self.elapsed_s:.0f} s in all\nfolder {self.folder}\n"
        )
        width = max(len(name) for name, _ in rows) + 2
        return head + "\n".join(f"  {name:<{width}}{value}" for name, value in rows)

    def failures(self) -> str:
        """The ids behind a FAIL, and the faults that came before the first one."""
        v = self.verdict
        out: list[str] = []
        if v.lost:
            out.append(
                f"LOST: {len(v.lost)} acknowledged events are not in the lake (first {SHOWN}):"
            )
            out += [f"  {s} {i}  acknowledged {clock(at)}" for (s, i), at in v.lost[:SHOWN]]
            out += self._before("the first lost event was acknowledged", v.lost[0][1])
        if v.duplicated:
            out.append(f"DUPLICATED: {len(v.duplicated)} events more than once (first {SHOWN}):")
            out += [
                f"  {s} {i}  x{n}  first received {clock(at)}"
                for (s, i), n, at in v.duplicated[:SHOWN]
            ]
            out += self._before("the first duplicate was received", v.duplicated[0][2])
        if v.phantom:
            out.append(f"PHANTOM: {len(v.phantom)} lake rows no producer sent:")
            out += [f"  {s} {i}" for s, i in v.phantom[:SHOWN]]
        for title, items in (
            ("MANIFEST MISMATCHES", v.manifest_problems),
            ("TEMP FILES LEFT", v.temp_files),
            ("HARNESS PROBLEMS", self.problems),
            ("UNEXPECTED EXITS (not failures by themselves)", self.unexpected_exits),
        ):
            if items:
                out.append(f"{title}: {len(items)}")
                out += [f"  {item}" for item in items[:SHOWN]]
        return "\n".join(out)

    def _before(self, what: str, wall: float) -> list[str]:
        entries = [e for e in self.timeline if e.wall <= wall][-25:]
        lines = [f"  fault timeline up to {clock(wall)} ({what}), last {len(entries)} entries:"]
        return lines + [f"    {e.line()}" for e in entries]

    def render(self) -> str:
        detail = self.failures()
        return self.table() + ("\n\n" + detail if detail else "")
