"""Optional: sample the gateway and the loader with py-spy during the measured run.

py-spy is not a dependency: ``--profile`` uses it when it is on PATH or next
to the running Python (``pip install py-spy``) and says so when it is not.
Sampling is ``--nonblocking`` (the target is not paused), and idle threads are
left out, so the share of samples in a function is its share of busy time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_TARGETS = ("gateway", "loader")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Frames every sample passes through (start-up, event loop, thread pool): left
# out of the inclusive list, which is about where the work is.
_PLUMBING = re.compile(
    r"^process \d+:|\(<frozen |\(asyncio/(runners|events|base_events)\.py\)|uvloop/__init__"
    r"|\(hourglass/(cli|__main__)\.py\)|\(threading\.py\)|\(concurrent/futures/"
)


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` → ``fn (pkg/mod.py)``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('name')} ({path})"


def summarize(raw: str, top: int = 12) -> dict[str, Any]:
    """Self and inclusive shares of the busiest functions, from py-spy's raw
    (collapsed-stack) output: ``frame;frame;... count`` per line."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        leaf[frames[-1]] += count
        for frame in set(frames):
            if not _PLUMBING.search(frame):
                inclusive[frame] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}
    return {
        "samples": total,
        "self": [[f, round(100.0 * n / total, 1)] for f, n in leaf.most_common(top)],
        "inclusive": [[f, round(100.0 * n / total, 1)] for f, n in inclusive.most_common(top)],
    }


async def record(
    pids: dict[str, int], seconds: float, root: Path, delay_s: float = 0.0, rate: int = 100
) -> dict[str, Any]:
    """py-spy each target for ``seconds`` after ``delay_s``; a summary per target.

    The raw stacks stay in ``root/py-spy-<target>.txt`` (flamegraph.pl input)."""
    if seconds <= 0:
        return {}
    binary = py_spy()
    if binary is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    await asyncio.sleep(delay_s)
    root.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
    for name in _TARGETS:
        pid = pids.get(name)
        if pid is None:
            continue
        out = root / f"py-spy-{name}.txt"
        proc = await asyncio.create_subprocess_exec(
            binary, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate),
            "-f", "raw", "-o", str(out), "--nonblocking", "--subprocesses",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        runs[name] = (proc, out)
    result: dict[str, Any] = {"seconds": seconds, "rate_hz": rate}
    for name, (proc, out) in runs.items():
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            result[name] = {"error": err.decode(errors="replace")[-500:]}
            continue
        summary = summarize(out.read_text())
        # Busy samples over all the samples a fully busy thread would give.
        summary["busy_share"] = round(summary["samples"] / (seconds * rate), 2)
        result[name] = summary
    return result
