"""End to end in a real browser: Debian's Chromium (headless, via Playwright) against the real router,
its UI and a real Consul agent. With UPDATE_SCREENSHOT=1 it also saves docs/ui-routes.png for the README.

Playwright's own browser downloads are never used: the browser is /usr/bin/chromium (`make browser`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import kv_put, make_client, register, wait_until
from tests.router_proc import RouterProc
from tests.test_consul_routing import router_for, uid

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = [
    pytest.mark.consul,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} not found: install Debian's chromium (`make browser`)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser) -> Iterator:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    p = ctx.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    yield p
    ctx.close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("web").start()
    yield b
    b.stop()


def visible_rows(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator("#routes tr:not(.hidden)").all_inner_texts()


def test_routes_page_live_updates_and_filter(consul_agent, backend, page, tmp_path) -> None:
    c = make_client(consul_agent.port)
    tag = uid()
    first, second = f"shop-{tag}", f"blog-{tag}"
    for i in range(3):
        register(c, first, f"{first}-{i}", backend.port, tags=[f"urlprefix-/{first}/v{i}", f"urlprefix-/{first}"])
    with router_for(consul_agent) as r:
        page.goto(r.ui + "/routes")
        page.wait_for_selector(f"#routes a:text-is('{first}')")
        page.evaluate("window.__notReloaded = true")
        # a registration shows up by itself, without a reload
        register(c, second, second, backend.port, tags=[f"urlprefix-/{second}"])
        page.wait_for_selector(f"#routes a:text-is('{second}')", timeout=TIMEOUT_MS)
        assert page.evaluate("window.__notReloaded") is True
        DOCS.mkdir(exist_ok=True)
        shot = DOCS / "ui-routes.png" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "ui-routes.png"
        page.screenshot(path=str(shot), full_page=True)
        # the filter narrows the rows and lives in the URL
        assert len([t for t in visible_rows(page) if first in t]) == 4  # 3 instances share one address
        page.fill("#filter", second)
        wait_until(lambda: len(visible_rows(page)) == 1, timeout=5)
        assert second in visible_rows(page)[0]
        row = page.locator("#routes tr:not(.hidden)").first
        assert row.locator("td").nth(6).inner_text() == "1/1"  # healthy instances / registered
        assert row.locator("td.rate").inner_text() == "-"  # no traffic yet
        # traffic shows up as the route's request rate and p99 within a poll or two, without a reload
        for _ in range(20):
            assert httpx.get(f"{r.url}/{second}/x").status_code == 200
        wait_until(lambda: row.locator("td.rate").inner_text() != "-", timeout=10)
        assert float(row.locator("td.p99").inner_text()) > 0
        assert f"filter={second}" in page.url
        page.reload()
        page.wait_for_selector(f"#routes a:text-is('{second}')")
        assert page.input_value("#filter") == second
        wait_until(lambda: len(visible_rows(page)) == 1, timeout=5)
        assert second in visible_rows(page)[0]
        # the service name leads to its detail view: instances with their Consul health
        page.click(f"#routes a:text-is('{second}')")
        page.wait_for_selector(f"#instances td:text-is('{second}')")
        assert "yes" in page.inner_text("#instances")
        assert page.inner_text("#why") == ""


def test_override_editor_marks_bad_line_and_shows_conflict(consul_agent, page) -> None:
    c = make_client(consul_agent.port)
    with router_for(consul_agent) as r:
        key = r.flags[r.flags.index("-registry.consul.kvpath") + 1].strip("/")
        kv_put(c, key, "route del nothing\n")
        page.goto(r.ui + "/manual")
        page.wait_for_function("document.getElementById('version').textContent !== '-'")
        assert page.input_value("#text") == "route del nothing\n"
        # one bad line: refused, and that line is marked
        page.fill("#text", "route del nothing\nroute ad oops\nroute del other\n")
        page.click("#save")
        page.wait_for_selector("#errors li[data-line='2']")
        assert "not saved" in page.inner_text("#message")
        assert page.locator("#gutter div.bad").all_inner_texts() == ["2"]
        assert c.kv.get(key)[1]["Value"].decode() == "route del nothing\n"
        # someone else saves meanwhile: ours is stale and the conflict is shown
        kv_put(c, key, "route del changed-elsewhere\n")
        page.fill("#text", "route del mine\n")
        page.click("#save")
        page.wait_for_selector("#message.bad:has-text('Conflict')")
        assert c.kv.get(key)[1]["Value"].decode() == "route del changed-elsewhere\n"
        # after reloading the key the save goes through
        page.reload()
        page.wait_for_function("document.getElementById('text').value.includes('changed-elsewhere')")
        page.fill("#text", "route del mine\n")
        page.click("#save")
        page.wait_for_selector("#message.ok")
        assert c.kv.get(key)[1]["Value"].decode() == "route del mine\n"


def test_routes_page_with_1500_routes(page) -> None:
    """Usable at 1,000+ routes: everything is listed and the filter still narrows to one row."""
    text = "\n".join(f"route add big{i} /big/{i:04d} http://127.0.0.1:{10000 + i}/" for i in range(1500))
    with RouterProc("-registry.backend", "static", "-registry.static.routes", text) as r:
        page.goto(r.ui + "/routes?filter=/big/0042")
        page.wait_for_function("document.getElementById('count').textContent === '1 of 1500 routes'")
        assert len(visible_rows(page)) == 1 and "/big/0042" in visible_rows(page)[0]
        page.fill("#filter", "big14")
        page.wait_for_function("document.getElementById('count').textContent === '111 of 1500 routes'")
