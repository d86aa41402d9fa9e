"""End to end in a real browser: Debian's Chromium (headless, via Playwright) against the real router,
its UI and a real Consul agent. With UPDATE_SCREENSHOT=1 it also saves docs/ui-routes.png for the README.

Playwright's own browser downloads are never used: the browser is /usr/bin/chromium (`make browser`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import kv_put, make_client, register, wait_until
from tests.router_proc import RouterProc, free_port
from tests.test_consul_routing import router_for, uid
from tests.test_ui_security import sha_entry

CHROMIUM = "/usr/bin/chromium"
# router.test resolves to 127.0.0.1 inside this browser only: a loopback UI reached under a name that is not
# a loopback name, as after DNS rebinding or through a hosts-file alias
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP router.test 127.0.0.1"]
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


def wait_loaded(page) -> None:  # type: ignore[no-untyped-def]
    """The editor has loaded the override text (its version field is filled in)."""
    page.wait_for_function("document.getElementById('version').textContent !== '-'")


def open_editor(page, url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url)
    wait_loaded(page)


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
        # the screenshot for the docs: every row, with traffic on some (UPDATE_SCREENSHOT=1 writes docs/)
        for i in range(3):
            for _ in range(5):
                assert httpx.get(f"{r.url}/{first}/v{i}/x").status_code == 200
        page.fill("#filter", tag)  # both services' rows only: other tests may share the agent
        wait_until(lambda: len(visible_rows(page)) == 5, timeout=5)
        wait_until(lambda: page.locator("#routes tr:not(.hidden) td.rate:text-is('-')").count() <= 1, timeout=10)
        shot = DOCS / "ui-routes.png" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "ui-routes.png"
        page.screenshot(path=str(shot), full_page=True)
        page.fill("#filter", second)
        wait_until(lambda: len(visible_rows(page)) == 1, timeout=5)
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
        open_editor(page, r.ui + "/manual")
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


def kvpath_of(r: RouterProc) -> str:
    return r.flags[r.flags.index("-registry.consul.kvpath") + 1].strip("/")


def stored(c, key: str) -> str | None:  # type: ignore[no-untyped-def]
    item = c.kv.get(key)[1]
    return None if item is None else item["Value"].decode()


def shown_time(epoch: float) -> str:
    """What the pages' utc() shows for an epoch (JS Date truncates to whole milliseconds)."""
    return datetime.fromtimestamp(math.floor(epoch * 1000) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


LAST_SYNC = "() => { const e = document.getElementById('last-sync'); return [e.dataset.epoch || null, e.textContent]; }"


def test_status_page_shows_sync_time_errors_and_redacted_config(consul_agent, page) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    with router_for(consul_agent, "-ui.auth.token", "tok-SECRET-5", "-registry.consul.token", "") as r:
        page.goto(r.ui + "/status")
        page.wait_for_selector("#last-sync[data-epoch]")
        epoch, text = page.evaluate(LAST_SYNC)
        assert text.startswith(shown_time(float(epoch))) and text.endswith("s ago)")
        assert page.inner_text("#errors") == "none"
        page.wait_for_selector("#cfgrows td:text-is('ui.auth.token')")
        row = page.locator("#cfgrows tr", has=page.locator("td:text-is('ui.auth.token')"))
        assert row.locator("td").nth(1).inner_text() == "<redacted>"
        assert "SECRET" not in page.content()
        page.fill("#cfgfilter", "ui.auth.token")
        assert page.locator("#cfgrows tr:not([hidden])").count() == 1
        assert page.inner_text("#builds") != "no table built yet"
        # the routes page's compact status shows the sync time as well
        page.goto(r.ui + "/routes")
        page.wait_for_selector("#last-sync[data-epoch]")
        epoch, text = page.evaluate(LAST_SYNC)
        assert text.startswith("last sync: " + shown_time(float(epoch)))
        assert page.locator("#recent-errors").count() == 0
        port = r.ui_port
    # nothing was fetched from anywhere but the router's UI
    assert requested and {urlsplit(u).netloc for u in requested} == {f"127.0.0.1:{port}"}


def test_status_pages_list_recent_watch_errors(page) -> None:
    nothing = f"127.0.0.1:{free_port()}"  # no Consul there: every read is refused
    with RouterProc("-registry.consul.addr", nothing, wait_ready=False) as r:
        page.goto(r.ui + "/status")
        page.wait_for_selector("#errors td:has-text('initial sync')")
        assert page.inner_text("#last-sync") == "never"
        first = page.locator("#errors tr").first.locator("td")
        assert first.nth(0).inner_text().endswith(" UTC") and "initial sync" in first.nth(1).inner_text()
        assert "shown of" in page.inner_text("#errcount")
        page.goto(r.ui + "/routes")
        page.wait_for_selector("#recent-errors summary:has-text('initial sync')")
        assert page.inner_text("#last-sync") == "last sync: never"
        page.click("#recent-errors summary")
        page.wait_for_selector("#recent-errors li:has-text('initial sync')")
        assert page.locator("#recent-errors a[href='/status']").count() == 1


def test_manual_opens_the_key_in_the_url_and_keeps_it(consul_agent, page) -> None:
    c = make_client(consul_agent.port)
    text_is = "value => document.getElementById('text').value === value"
    with router_for(consul_agent) as r:
        key = kvpath_of(r)
        kv_put(c, key, "route del main\n")
        kv_put(c, f"{key}/maint", "route del m\n")
        page.goto(r.ui + "/manual?key=/maint")
        page.wait_for_function(text_is, arg="route del m\n")
        assert page.input_value("#path") == "/maint"
        # switching keys keeps the URL in step, so a reload (or a shared link) opens the same key
        page.select_option("#path", "")
        page.wait_for_function(text_is, arg="route del main\n")
        assert urlsplit(page.url).query == ""
        page.select_option("#path", "/maint")
        page.wait_for_function(text_is, arg="route del m\n")
        assert urlsplit(page.url).query == "key=/maint"
        page.reload()
        page.wait_for_function(text_is, arg="route del m\n")
        assert page.input_value("#path") == "/maint"
        page.goto(r.ui + "/manual?key=maint")  # the leading slash is optional
        page.wait_for_function(text_is, arg="route del m\n")
        assert page.input_value("#path") == "/maint"
        # a key that does not exist yet opens empty and a save creates it
        page.goto(r.ui + "/manual?key=/later")
        page.wait_for_function("document.getElementById('version').textContent === '0'")
        assert page.input_value("#path") == "/later" and page.input_value("#text") == ""
        page.fill("#text", "route del later\n")
        page.click("#save")
        page.wait_for_selector("#message.ok")
        assert stored(c, f"{key}/later") == "route del later\n"
        page.click("#add")  # "open" with an empty box goes to the main key
        page.wait_for_function(text_is, arg="route del main\n")
        assert urlsplit(page.url).query == ""


def test_editor_sends_the_bearer_token(consul_agent, page) -> None:
    """The UI reached as router.test (resolving to 127.0.0.1): loopback peer, but not a loopback name."""
    c = make_client(consul_agent.port)
    with router_for(consul_agent, "-ui.auth.token", "tok-browser") as r:
        key = kvpath_of(r)
        open_editor(page, f"http://router.test:{r.ui_port}/manual")
        page.fill("#text", "route del tokened\n")
        page.click("#save")
        page.wait_for_selector("#message.bad:has-text('credentials required')")
        assert stored(c, key) is None
        page.fill("#token", "wrong")
        page.click("#save")
        page.wait_for_selector("#message.bad:has-text('credentials required')")
        assert stored(c, key) is None
        page.fill("#token", "tok-browser")
        page.click("#save")
        page.wait_for_selector("#message.ok")
        assert stored(c, key) == "route del tokened\n"
        # kept for this tab only: in sessionStorage across a reload, never in localStorage or another tab
        page.reload()
        wait_loaded(page)
        assert page.input_value("#token") == "tok-browser"
        assert page.evaluate("localStorage.length") == 0
        other = page.context.new_page()
        open_editor(other, f"http://router.test:{r.ui_port}/manual")
        assert other.input_value("#token") == ""


def test_editor_save_with_basic_auth(consul_agent, browser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With ui.auth.htpasswd the 401 is a Basic challenge: the browser's own login (here Playwright's) answers it."""
    c = make_client(consul_agent.port)
    users = tmp_path / "htpasswd"
    users.write_text(sha_entry("ann", "s3cret") + "\n")
    ctx = browser.new_context(http_credentials={"username": "ann", "password": "s3cret"})
    try:
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        with router_for(consul_agent, "-ui.auth.htpasswd", str(users)) as r:
            key = kvpath_of(r)
            open_editor(page, f"http://router.test:{r.ui_port}/manual")
            page.fill("#text", "route del basic\n")
            page.click("#save")
            page.wait_for_selector("#message.ok")
            assert stored(c, key) == "route del basic\n"
    finally:
        ctx.close()
