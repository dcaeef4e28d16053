"""The browser SDK (``sdk/js``) in Debian's Chromium, against a real gateway,
bus, loader and lake.

Pages are served by the test from loopback on ports of their own, so each is a
different origin from the gateway's. The first test is the SDK's promise: 1,000
events, a reload in the middle of sending, an offline period, and the lake holds
each event exactly once. The second runs the snippets of docs/browser-sdk.md as
written, and shows a page of an origin not in ``cors_origins`` getting nothing in.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.chaos.conftest import lake_keys_duckdb, wait_until
from tests.integration.browser import REPO, browser
from tests.integration.conftest import StartGateway, StartLoader
from tests.integration.support import NatsServer, events_of

pytestmark = [pytest.mark.integration]

DIST = REPO / "sdk" / "js" / "dist"
DOC = REPO / "docs" / "browser-sdk.md"
TYPE = "music.SongSkipped"
KEY = "pk-web-3f9a"  # the docs' key
KEYS = f'[keys]\n"{KEY}" = {{ name = "website", types = ["{TYPE}"] }}\n'
DOC_GATEWAY = "http://localhost:8080"  # the docs' gateway, replaced by the test's

# The page of the first test: the SDK on `window`, short waits so the test is quick.
APP = """<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
  import { Producer } from "/js/hourglass.mjs";
  window.hg = new Producer({
    url: "%(gateway)s", apiKey: "%(key)s", batchSize: 20, flushIntervalMs: 100,
    backoffBaseMs: 100, backoffCapMs: 1000,
    onDropped: (e, reason) => (window.dropped = [...(window.dropped ?? []), reason]),
    onError: (e) => (window.errors = [...(window.errors ?? []), String(e)]),
  });
</script>"""

EMIT = """async ([type, from, n]) => {
  const ids = [];
  const emits = [];
  for (let i = from; i < from + n; i++) {
    emits.push(hg.emit(type, {
      user_id: "5f0c7a3e-8d1b-4c2a-9e6f-1a2b3c4d5e6f", track_id: "t-" + i,
      skipped_at: new Date().toISOString(), position_ms: i,
    }));
  }
  for (const emit of emits) ids.push(await emit);
  return { ids, queued: (await hg.queued()).count };
}"""
QUEUED = "async () => (await hg.queued()).count"


class Site:
    """Static pages on a loopback port of their own: an origin."""

    def __init__(self) -> None:
        files: dict[str, tuple[str, bytes]] = {
            f"/js/{name}": ("text/javascript", sdk_file(name))
            for name in ("hourglass.mjs", "hourglass.js")
        }
        self.files = files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                kind, body = files.get(self.path, ("text/plain", b""))
                self.send_response(200 if body else 404)
                self.send_header("content-type", kind)
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, html: str) -> None:
        self.files[path] = ("text/html", html.encode())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sdk_file(name: str) -> bytes:
    path = DIST / name
    assert path.exists(), (
        f"{path} is missing: `make test` builds it (cd sdk/js && npm ci && npm test)"
    )
    return path.read_bytes()


def doc_snippets() -> dict[str, str]:
    """The docs' ``<!-- snippet: NAME ... -->`` html blocks, as written."""
    found = re.findall(r"<!-- snippet: (\w+)[^>]*-->\s*```html\n(.*?)```", DOC.read_text(), re.S)
    return dict(found)


@pytest.fixture
def sites() -> Iterator[list[Site]]:
    made: list[Site] = []
    yield made
    for site in made:
        site.close()


def wait_queue_empty(page: Page, timeout: float, what: str) -> None:
    wait_until(lambda: page.evaluate(QUEUED) == 0, timeout, what, every=0.1)


def test_a_thousand_events_through_a_reload_and_offline_land_once(
    nats_server: NatsServer,
    start_gateway: StartGateway,
    start_loader: StartLoader,
    sites: list[Site],
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    sites.append(app := Site())
    gw = start_gateway(api_keys=str(keys), cors_origins=[app.origin])
    app.add("/", APP % {"gateway": gw.base, "key": KEY})
    loader = start_loader(flush_interval_s=0.5)
    lake = Path(loader.settings.lake_url)

    with browser() as b:
        context = b.new_context()
        page = context.new_page()
        page.goto(app.origin + "/")
        page.wait_for_function("window.hg !== undefined")

        # 500 queued, and the page reloaded while they are being sent.
        first = page.evaluate(EMIT, [TYPE, 0, 500])
        page.reload()
        assert 0 < first["queued"], "the reload came after the sending, not in the middle of it"
        page.wait_for_function("window.hg !== undefined")
        wait_queue_empty(page, 30, "the reloaded page to send what the first one left")

        # Offline: 500 more wait in the queue, nothing is tried; back online, they go.
        context.set_offline(True)
        second = page.evaluate(EMIT, [TYPE, 500, 500])
        page.wait_for_timeout(1500)
        assert page.evaluate(QUEUED) == 500
        context.set_offline(False)
        page.evaluate("() => hg.flush()")
        assert page.evaluate(QUEUED) == 0
        assert page.evaluate("() => [window.dropped ?? [], window.errors ?? []]") == [[], []]
        context.close()

    emitted = first["ids"] + second["ids"]
    assert len(set(emitted)) == 1000
    on_bus = Counter(e["id"] for e in events_of(nats_server.url, TYPE))
    assert set(on_bus) == set(emitted)

    def landed() -> list[tuple[str, str]] | None:
        keys_ = lake_keys_duckdb(lake, TYPE)
        return keys_ if len(keys_) >= 1000 else None

    rows = wait_until(landed, 60, "1,000 rows in the lake")
    assert Counter(i for _, i in rows) == Counter(emitted), "each event in the lake once"
    assert {s for s, _ in rows} == {app.origin}
    print(f"sent twice by the reload, dropped by dedup: {sum(on_bus.values()) - 1000}")


def test_the_docs_snippets_work_as_written_and_other_origins_get_nothing_in(
    nats_server: NatsServer, start_gateway: StartGateway, sites: list[Site], tmp_path: Path
) -> None:
    snippets = doc_snippets()
    assert set(snippets) == {"esm", "script"}, snippets.keys()
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    sites.append(site := Site())
    sites.append(other := Site())  # the same pages, from an origin not allowed
    gw = start_gateway(api_keys=str(keys), cors_origins=[site.origin])
    for name, html in snippets.items():
        assert DOC_GATEWAY in html and KEY in html, name
        for s in (site, other):
            s.add(f"/{name}.html", html.replace(DOC_GATEWAY, gw.base))
    other.add("/", APP % {"gateway": gw.base, "key": KEY})

    def sources() -> Counter[str]:
        # In a thread: Playwright's sync API holds this thread's event loop.
        with ThreadPoolExecutor(1) as pool:
            events = pool.submit(events_of, nats_server.url, TYPE).result()
        return Counter(e["source"] for e in events)

    landed = 0
    with browser() as b:
        for name in snippets:
            page = b.new_page()
            page.goto(f"{site.origin}/{name}.html")
            page.click("#skip")
            landed += 1  # one event per snippet, on the same bus
            wait_until(
                lambda n=landed: sources()[site.origin] == n, 15, f"the {name} snippet's event"
            )
            page.close()

        # Another origin: its preflight is refused, the browser sends nothing, and the
        # events stay queued (through a reload too), not dropped; a request the browser
        # sends without a preflight (a form-like text/plain POST) the gateway refuses.
        page = b.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text))
        page.goto(other.origin + "/")
        page.wait_for_function("window.hg !== undefined")
        page.evaluate(EMIT, [TYPE, 0, 3])
        page.wait_for_timeout(1500)
        page.reload()
        page.wait_for_function("window.hg !== undefined")
        page.wait_for_timeout(500)
        assert page.evaluate(QUEUED) == 3, "the refused events stay queued, not dropped"
        simple = page.evaluate(
            """async (url) => {
                await fetch(url + "/v1/events", {method: "POST", mode: "no-cors",
                    headers: {"content-type": "text/plain"}, body: "[]"});
                return "sent";
            }""",
            gw.base,
        )
        assert simple == "sent"
        page.close()

    assert any("CORS" in e for e in errors), errors
    assert sources() == Counter({site.origin: 2})


def test_the_documented_bundle_sizes_are_the_built_ones() -> None:
    """docs/browser-sdk.md's sizes against dist/sizes.json, which the build writes."""
    built = json.loads(sdk_file("sizes.json"))
    text = DOC.read_text()
    documented = re.search(
        r"\*\*([\d.]+) KB\*\* \(`hourglass.mjs`\), \*\*([\d.]+) KB gzipped\*\*", text
    )
    assert documented, "the sizes' sentence in docs/browser-sdk.md"
    esm = built["dist/hourglass.mjs"]
    for shown, actual in zip(documented.groups(), (esm["minified"], esm["gzipped"]), strict=True):
        assert abs(float(shown) * 1000 - actual) <= 150, (shown, actual)
