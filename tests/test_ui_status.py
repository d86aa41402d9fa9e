"""What an operator reads without a browser: /api/version, the pages' self-containment, /status, and the
route-change log that `log.routes.format` selects (router/table/state.py), all in-process (no Consul needed)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import types
import warnings

import pytest

import router
from registry.consul import status as consul_status
from router.config.settings import load
from router.run.router import Router
from router.table.routecmd import parse
from router.table.state import ALL_LIMIT, RouterState

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we have and it works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PAGES = ["/routes", "/service?name=a", "/manual", "/status"]


def static_router(*flags: str) -> Router:
    return Router(load(["-registry.backend", "static", "-registry.static.routes",
                        "route add a /a http://127.0.0.1:5/", *flags]))


def test_api_version_is_the_package_version() -> None:
    with TestClient(static_router().ui) as client:
        r = client.get("/api/version")
        assert r.status_code == 200 and r.text.strip() == router.__version__
        assert client.get("/api/status").json()["version"] == router.__version__
        assert f"v{router.__version__}" in client.get("/routes").text


def test_pages_load_nothing_from_other_hosts() -> None:
    """Every served page is self-contained: no http(s):// URL, no protocol-relative src/href, no @import."""
    with TestClient(static_router().ui, base_url="http://127.0.0.1:9998") as client:
        for path in PAGES:
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
            html = r.text
            assert re.findall(r"(?i)\bhttps?://[^\s\"'<>`]+", html) == [], path
            assert re.findall(r"(?i)\b(?:src|href|action|srcset)\s*=\s*[\"']?\s*//", html) == [], path
            assert "@import" not in html and not re.search(r"(?i)url\(\s*[\"']?\s*(?:https?:)?//", html), path
            # and the scripts' own fetches all go to absolute paths on this host
            for target in re.findall(r"fetch\(\s*[\"'`]([^\"'`]*)", html):
                assert target.startswith("/") and not target.startswith("//"), (path, target)


def test_status_page_is_served_and_config_stays_redacted() -> None:
    r = static_router("-ui.auth.token", "tok-SECRET-9", "-ui.title", "edge")
    with TestClient(r.ui) as client:
        page = client.get("/status")
        assert page.status_code == 200 and "edge" in page.text
        assert "/api/status" in page.text and "/api/config" in page.text
        assert "SECRET" not in client.get("/api/config").text
        assert client.get("/api/config").json()["ui.auth.token"] == "<redacted>"
        for path in PAGES:  # every page links to the status page
            assert 'href="/status"' in client.get(path).text, path


def test_status_reports_sync_time_and_recent_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()  # the status's wall clock, frozen: the sync is at `now` and its age exactly 0
    monkeypatch.setattr(consul_status, "time", types.SimpleNamespace(time=lambda: now, monotonic=time.monotonic))
    r = static_router()
    r.status.error("kv watch: connection refused")
    asyncio.run(r.registry())  # the static source counts as a sync
    with TestClient(r.ui) as client:
        reg = client.get("/api/status").json()["registry"]
    assert reg["last_sync"] == r.status.last_sync == now and reg["sync_age_seconds"] == 0.0
    assert reg["error_count"] == 1 and reg["recent_errors"][0]["error"] == "kv watch: connection refused"


# ----------------------------------------------------------------------------- log.routes.format


def cmds(text: str) -> list:
    parsed, errors = parse(text)
    assert not errors
    return parsed


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [rec.getMessage() for rec in caplog.records if rec.name == "router.table"]
    caplog.clear()
    return out


def test_routes_log_delta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.table")
    st = RouterState(routes_log="delta")
    st.apply({"a": cmds("route add a /a http://127.0.0.1:5/\nroute add a /b http://127.0.0.1:5/")})
    [m] = messages(caplog)
    assert m.startswith("routing table changed (2 routes")
    assert m.splitlines()[1:] == ["+ route add a /a http://127.0.0.1:5/", "+ route add a /b http://127.0.0.1:5/"]
    st.apply({"b": cmds("route add b /c http://127.0.0.1:6/")})
    [m] = messages(caplog)
    assert m.splitlines()[1:] == ["+ route add b /c http://127.0.0.1:6/"]  # a's routes are not repeated
    st.apply({"a": cmds("route add a /a http://127.0.0.1:5/")})
    [m] = messages(caplog)
    assert m.splitlines()[1:] == ["- route add a /b http://127.0.0.1:5/"]
    st.apply({"a": cmds("route add a /a http://127.0.0.1:5/")})  # nothing changed: nothing logged
    assert messages(caplog) == []
    st.apply({"b": None})
    [m] = messages(caplog)
    assert m.splitlines()[1:] == ["- route add b /c http://127.0.0.1:6/"]


def test_routes_log_detail_is_fabios_tree(caplog: pytest.LogCaptureFixture) -> None:
    """`detail`: hosts ascending, paths, and per target its address, weight and its slots on fabio's ring
    (tests/fabio/test_table.py checks fabio's own TestTable_Dump row)."""
    caplog.set_level(logging.INFO, logger="router.table")
    st = RouterState(routes_log="detail")
    st.apply({"a": cmds("route add a /a http://127.0.0.1:5/\nroute add a /a http://127.0.0.2:5/"),
              "b": cmds("route add b b.com/ http://b:80/ weight 0.25\nroute add b b.com/x http://b2/")})
    [m] = messages(caplog)
    assert m.splitlines() == [
        m.splitlines()[0],
        "+-- host=",
        "|   +-- path=/a",
        "|       |-- addr=127.0.0.2:5 weight 0.50 slots 1/2",  # no fixed weight: one slot each (fabio)
        "|       +-- addr=127.0.0.1:5 weight 0.50 slots 1/2",
        "+-- host=b.com",
        "    |-- path=/x",
        "    |    +-- addr=b2 weight 1.00 slots 1/1",  # fabio's Dump indents these by one more space
        "    +-- path=/",
        "        +-- addr=b:80 weight 1.00 slots 10000/10000",
    ]
    assert m.startswith("routing table (4 routes")


def test_routes_log_all_switches_to_delta_above_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.table")
    assert ALL_LIMIT == 10_000  # docs/operators.md states this number
    st = RouterState(routes_log="all")
    st.apply({"a": cmds("route add a /a http://127.0.0.1:5/")})
    st.apply({"b": cmds("route add b /b http://127.0.0.1:6/")})
    [first, second] = messages(caplog)
    # the whole table each time, the unchanged service's route included
    assert first.startswith("routing table (1 routes") and "route add a /a" in first
    assert second.startswith("routing table (2 routes") and "route add a /a" in second and "route add b /b" in second
    big = "\n".join(f"route add big /big/{i} http://127.0.0.1:7/" for i in range(ALL_LIMIT - 2))
    st.apply({"big": cmds(big)})  # exactly ALL_LIMIT entries: still the whole table
    [m] = messages(caplog)
    assert m.startswith(f"routing table ({ALL_LIMIT} routes") and len(m.splitlines()) > ALL_LIMIT
    st.apply({"c": cmds("route add c /c http://127.0.0.1:8/")})  # one more: only the change
    [m] = messages(caplog)
    assert m.startswith(f"routing table changed ({ALL_LIMIT + 1} routes")
    assert m.splitlines()[1:] == ["+ route add c /c http://127.0.0.1:8/"]
    # a change to a service seen while still in "all" mode is a true delta too, not all its lines again
    st.apply({"big": cmds(big + "\nroute add big /big/extra http://127.0.0.1:7/")})
    [m] = messages(caplog)
    assert m.splitlines()[1:] == ["+ route add big /big/extra http://127.0.0.1:7/"]


@pytest.mark.parametrize("color, bg, fg", [
    ("light-green", "#8bc34a", "#ffffff"),  # fabio's default
    ("blue darken-2", "#1972b9", "#ffffff"),  # modifier: 24 % black (Materialize: #1976d2)
    ("yellow", "#ffeb3b", "#212121"),  # a light colour gets dark text
    ("#2E7D32", "#2e7d32", "#ffffff"),
])
def test_ui_color_paints_every_nav_bar(color: str, bg: str, fg: str) -> None:
    with TestClient(static_router("-ui.color", color).ui) as client:
        for path in PAGES:
            text = client.get(path).text
            assert f"nav {{ background: {bg}; color: {fg};" in text, path
            assert "{{" not in text, path  # every placeholder filled


def test_ui_title_is_escaped_in_the_pages() -> None:
    with TestClient(static_router("-ui.title", "<b>edge</b>").ui) as client:
        text = client.get("/routes").text
        assert "consul-router - &lt;b&gt;edge&lt;/b&gt;" in text and "<b>edge</b>" not in text
