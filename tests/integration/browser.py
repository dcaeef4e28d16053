"""Headless Chromium for page tests: Debian's ``chromium``, driven over the
DevTools protocol by Playwright (no browser download: ``executable_path``).

``.ci/run`` (``make test``) installs ``chromium`` when it is missing; a machine
without it fails these tests with that instruction, not with a skip.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

REPO = Path(__file__).resolve().parents[2]
# Screenshots and the like, kept after the run (build/ is not committed).
ARTIFACTS = Path(os.environ.get("HOURGLASS_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))

# As root, with no network but loopback: no sandbox, nothing that phones home.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed: `make test` installs it (apt-get install chromium)"
    return path


@contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def picture_stats(page: Page, png: bytes) -> dict[str, Any]:
    """Colours and the share of non-white pixels of ``png``, decoded by the browser
    itself (a canvas): a blank or single-colour screenshot has next to none."""
    src = "data:image/png;base64," + base64.b64encode(png).decode()
    stats: dict[str, Any] = page.evaluate(
        """async (src) => {
          const img = new Image(); img.src = src; await img.decode();
          const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
          const g = c.getContext('2d'); g.drawImage(img, 0, 0);
          const d = g.getImageData(0, 0, c.width, c.height).data;
          const colours = new Set(); let inked = 0, n = 0;
          for (let i = 0; i < d.length; i += 4 * 7) {
            n++; colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) inked++;
          }
          return {width: c.width, height: c.height, colours: colours.size, inked: inked / n};
        }""",
        src,
    )
    return stats
