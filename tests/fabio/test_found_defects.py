"""The defects issue 14 lists under "Found already", each end to end through a real router process: what
fabio does is what we must do (or docs/compat.md says why not). One router serves them all."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fabio.e2e import Server, get, text
from tests.router_proc import RouterProc

BAD_RULES = {"/bad1": "x:10.0.0.0/8", "/bad2": "ip:10/8", "/bad3": "ip:10.0.0.0/255"}


@pytest.fixture(scope="module")
def backend() -> Iterator[Server]:
    with Server(text("backend")) as s:
        yield s


def routes(backend: Server) -> str:
    lines = [
        'route add svc example.com:80/ https://example.com$path opts "redirect=301"',
        f"route add svc example.com/ {backend.url}/",
        'route add svc /foo https://bar.com/bbb$path opts "redirect=301 strip=/foo"',
        'route add svc /pre https://bar.com/bbb$path opts "redirect=302 strip=/pre prepend=/x"',
        f"route add svc fwd.test/ {backend.url}/",
        f"route add svc /open {backend.url}/",
    ]
    for path, value in BAD_RULES.items():
        lines.append(f'route add svc {path}/allow {backend.url}/ opts "allow={value}"')
        lines.append(f'route add svc {path}/deny {backend.url}/ opts "deny={value}"')
    return "\n".join(lines)


@pytest.fixture(scope="module")
def router(backend: Server) -> Iterator[RouterProc]:
    with RouterProc.static(routes(backend), "-proxy.noroutestatus", "999") as r:
        yield r


def test_http_to_https_redirect_wins_over_the_plain_host_route(router: RouterProc) -> None:
    """fabio #656: `example.com:80/` redirects while `example.com/` proxies (with glob matching off too:
    TestTableLookup_656 in tests/fabio/test_table.py)."""
    for host in ("example.com", "example.com:80"):
        a = get(router.url + "/foo", Host=host)
        assert (a.status, a.headers.get("location")) == (301, "https://example.com/foo")
    # behind a TLS terminator (X-Forwarded-Proto: https) the redirect would loop: the plain route serves it
    a = get(router.url + "/foo", Host="example.com", **{"X-Forwarded-Proto": "https"})
    assert (a.status, a.body) == (200, b"backend")


def test_strip_that_takes_the_whole_path_leaves_path_empty_in_a_redirect(router: RouterProc) -> None:
    """`strip=/foo` then `redirect=301,https://bar.com/bbb$path`: `/foo` goes to `https://bar.com/bbb`."""
    for path, location in [("/foo", "https://bar.com/bbb"), ("/foo/", "https://bar.com/bbb/"),
                           ("/foo/a?q=1", "https://bar.com/bbb/a?q=1"), ("/pre", "https://bar.com/bbb/x")]:
        a = get(router.url + path)
        assert a.status in (301, 302) and a.headers["location"] == location, path


def test_malformed_access_rules_refuse_the_route_and_are_reported(router: RouterProc) -> None:
    """fabio logs a malformed allow=/deny= value and serves the route without rules; we refuse that route
    (docs/compat.md: a typo must not open a protected route) and say so under errors in /api/status, and
    every other route keeps working."""
    assert get(router.url + "/open").status == 200
    errors = httpx.get(router.ui + "/api/status").json()["errors"]["table"]
    for path, value in BAD_RULES.items():
        for option in ("allow", "deny"):
            assert get(router.url + f"{path}/{option}").status == 999  # no route (the noroute status)
            mine = [e for e in errors if f"{option}={value}" in e]
            assert len(mine) == 1 and f"{path}/{option}" in mine[0], mine
            assert f"invalid access rules: access rule '{value}'" in mine[0]


def test_every_noroute_status_the_config_accepts_is_sent(router: RouterProc) -> None:
    """fabio's range for proxy.noroutestatus is 100-999 (TestProxyNoRouteStatus uses 999); uvicorn's status
    table stopped at 599 and closed the connection instead."""
    a = get(router.url + "/nothing", Host="none.test")
    assert a.status == 999 and a.body == b"no route\n"


def test_forwarded_proto_fills_in_x_forwarded_proto(router: RouterProc, backend: Server) -> None:
    """`Forwarded: for=1.2.3.4; proto=https` and no X-Forwarded-Proto: fabio sends X-Forwarded-Proto https."""
    cases = [({"Forwarded": "for=1.2.3.4; proto=https"}, "https"), ({}, "http"),
             ({"Forwarded": "for=1.2.3.4; proto=https", "X-Forwarded-Proto": "http"}, "http")]
    for headers, want in cases:
        assert get(router.url + "/a", Host="fwd.test", **headers).status == 200
        assert backend.seen[-1][1]["x-forwarded-proto"] == want, headers
