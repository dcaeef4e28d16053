"""The embedded bus's log is bounded: nats-server rotates it, and the store-error
watch (LogTail) follows the new file."""

from __future__ import annotations

import os
from pathlib import Path

from hourglass.bus.embedded import EmbeddedBus, LogTail


async def test_nats_log_is_rotated_and_the_old_ones_pruned(tmp_path: Path) -> None:
    for _ in range(4):  # every start writes a banner of a few KiB
        bus = EmbeddedBus(tmp_path, log_max_bytes=1024, log_files=2)
        await bus.start()
        await bus.stop()
    logs = sorted((tmp_path / "bus").glob("nats.log*"))
    assert (tmp_path / "bus" / "nats.log") in logs
    assert len(logs) == 2, f"rotated, and all but the newest rotated file removed: {logs}"
    # Four banners unrotated would be ~8 KiB; each file is cut soon after 1 KiB.
    assert all(p.stat().st_size < 4096 for p in logs), [p.stat().st_size for p in logs]


def test_log_tail_follows_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "nats.log"
    path.write_text("one\ntwo\n")
    tail = LogTail(path)
    assert tail.lines() == ["one", "two"]
    os.rename(path, tmp_path / "nats.log.1")
    path.write_text("three and a much longer line than before\n")  # larger than the offset
    assert tail.lines() == ["three and a much longer line than before"]
    with open(path, "a") as f:
        f.write("four\n")
    assert tail.lines() == ["four"]
