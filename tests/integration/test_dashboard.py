"""The built-in dashboard in a real browser (headless Chromium over the DevTools protocol).

The first test is what a new user does: ``hourglass up --demo``, open the URL
the banner prints, watch the demo's buckets close, click one, read its
manifest.  The second loads a page of 300 types x 48 buckets and times it.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import uvicorn

from hourglass.bus.embedded import free_port
from hourglass.config import Settings
from hourglass.lake.layout import SUCCESS, bucket_key
from hourglass.monitor.server import App
from hourglass.monitor.snapshot import STATES, Cell, Minute, Snapshot, TypeRow
from hourglass.schemas import load_registry
from tests.groups import TIMING
from tests.integration.browser import ARTIFACTS, browser, picture_stats
from tests.integration.test_up import StartUp, start_up, wait_for  # noqa: F401

pytestmark = [pytest.mark.integration, TIMING]

CLOSED = ("ontime", "skewed", "late", "incomplete")


def test_the_demo_s_buckets_close_on_the_dashboard_and_show_their_manifest(
    start_up: StartUp,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    up = start_up(data, "--demo", "--bucket", "1m", "--demo-rate", "40")
    found = re.search(r"dashboard:\s+(http://\S+)", up.output())
    assert found, up.output()
    url = found.group(1)
    types = load_registry(Settings()).type_names
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 520})
        outside: list[str] = []
        origin = url.rstrip("/")
        page.on(
            "request", lambda r: outside.append(r.url) if not r.url.startswith(origin) else None
        )
        page.goto(url)
        for name in types:
            page.wait_for_selector(f'tr[data-type="{name}"]', timeout=30_000)
        # The page polls on its own: a bucket of the demo turns closed (a
        # minute's bucket ends, the loader closes it within seconds).
        closed = ", ".join(f'td.cell[data-state="{s}"]' for s in CLOSED)
        page.wait_for_selector(closed, timeout=150_000)
        cell = page.locator(closed).first
        state = cell.get_attribute("data-state")
        assert state == "ontime", f"the demo's first bucket closed {state}\n{up.output()[-3000:]}"
        start = int(cell.get_attribute("data-start") or 0)
        type_name = cell.locator("xpath=..").get_attribute("data-type")
        assert type_name in types
        cell.click()
        page.wait_for_selector("#manifest")
        shown = json.loads(page.inner_text("#manifest"))
        audit = page.inner_text("#bucket-audit")
        png = page.screenshot()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "dashboard.png").write_bytes(png)
        stats = picture_stats(page, png)
    # What the page shows is the lake's own manifest of that bucket.
    key = bucket_key(type_name, dt.datetime.fromtimestamp(start, dt.UTC), 60)
    assert shown == json.loads((data / "lake" / key / SUCCESS).read_text())
    assert shown["count"] > 0 and shown["files"]
    assert re.search(r"missing\s+0", audit) and re.search(r"files match the manifest\s+yes", audit)
    assert not outside, f"the page fetched from elsewhere: {outside}"
    assert stats["width"] == 1400 and stats["colours"] > 20 and stats["inked"] > 0.02, stats


# --- 300 types x 48 buckets ------------------------------------------------------------


class Synthetic:
    """A snapshot of many types, for the page's speed alone (no bus, no lake)."""

    def __init__(self, types: int, buckets: int) -> None:
        rng = random.Random(7)
        now = time.time()
        width = 3600
        first = int(now) - int(now) % width - (buckets - 1) * width
        rows = []
        for i in range(types):
            cells = []
            for k in range(buckets):
                # Every third type has a problem somewhere: late, overdue, incomplete.
                state = rng.choice(STATES if i % 3 == 0 else ("open", "ontime", "skewed", "empty"))
                closed = state in CLOSED
                cells.append(
                    Cell(first + k * width, state, 1000, 1000, 3, 1, 1001, 42.0 if closed else None)
                )
            rows.append(
                TypeRow(
                    type=f"team{i % 30}.Event{i:03d}",
                    owner=f"team-{i % 30}",
                    tier=1 + i % 3,
                    target_s=3600,
                    enabled=True,
                    partitions=1,
                    lag_events=i,
                    lag_s=1.0,
                    overdue_s=0.0,
                    overdue=0,
                    budget_bytes=1 << 30,
                    unconsumed_bytes=1e6,
                    dedup_window_s=86400.0,
                    dedup_configured_s=86400,
                    cells=cells,
                )
            )
        minutes = [Minute(int(now // 60) - 59 + m, 6000, 600, 2.0, 9.0) for m in range(60)]
        snap = Snapshot(now, "1h", width, buckets, rows, minutes, 3, 0.4, [])
        self.json = msgspec.json.encode(snap)
        self.first = first

    def snapshot_json(self) -> bytes:
        return self.json

    def bucket_json(self, type_name: str, start: int) -> bytes | None:
        audit = {"published": 1000, "delivered": 1000, "duplicates": 3, "missing": 0}
        body = {"type": type_name, "start": start, "end": start + 3600, "state": "ontime"}
        body |= {
            "manifest": {"type": type_name, "count": 1000},
            "audit": audit | {"files_match_manifest": True, "problems": []},
        }
        return msgspec.json.encode(body)

    def metrics_text(self) -> bytes:
        return b""


@pytest.fixture
def synthetic_page() -> Iterator[tuple[str, Synthetic]]:
    source = Synthetic(300, 48)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            App(source), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the page server", lambda: _connects(port), 10)
    try:
        yield f"http://127.0.0.1:{port}/", source
    finally:
        server.should_exit = True
        thread.join(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_300_types_by_48_buckets_stay_responsive(synthetic_page: tuple[str, Synthetic]) -> None:
    url, source = synthetic_page
    assert len(source.json) < 2_000_000  # a poll every 3 s on loopback or a LAN
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 900})
        started = time.monotonic()
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('td.cell').length === 300 * 48")
        first_paint = time.monotonic() - started
        # A poll's re-render, a filter keystroke, a click: each well under a second.
        render_ms = page.evaluate(
            "() => { const t = performance.now(); render(); return performance.now() - t; }"
        )
        page.fill("#filter", "team7.")
        page.wait_for_function("document.querySelectorAll('#grid tbody tr').length === 10")
        page.fill("#filter", "")
        t = time.monotonic()
        page.locator("td.cell").nth(4000).click()
        page.wait_for_selector("#manifest")
        click_s = time.monotonic() - t
        # Only types with a problem: rows with an overdue, late or incomplete cell.
        page.check("#problems")
        shown = page.evaluate("document.querySelectorAll('#grid tbody tr').length")
    assert first_paint < 5, first_paint
    assert render_ms < 500, render_ms
    assert click_s < 2, click_s
    print(
        f"300x48: first paint {first_paint:.2f} s, render {render_ms:.0f} ms, click {click_s:.2f} s"
    )
    assert shown == 100
