"""The defects issue 14 lists under "Found already", each end to end through a real router process: what
fabio does is what we must do (or docs/compat.md says why not)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fabio.e2e import Server, get, text
from tests.router_proc import RouterProc


@pytest.fixture(scope="module")
def backend() -> Iterator[Server]:
    with Server(text("backend")) as s:
        yield s


@pytest.mark.parametrize("glob_disabled", ["false", "true"])
def test_http_to_https_redirect_wins_over_the_plain_host_route(backend: Server, glob_disabled: str) -> None:
    """fabio #656 (TestTableLookup_656): `example.com:80/` redirects while `example.com/` proxies."""
    routes = (f'route add svc example.com:80/ https://example.com$path opts "redirect=301"\n'
              f"route add svc example.com/ {backend.url}/")
    with RouterProc.static(routes, "-glob.matching.disabled", glob_disabled) as r:
        a = get(r.url + "/foo", Host="example.com")
        assert (a.status, a.headers.get("location")) == (301, "https://example.com/foo")
        a = get(r.url + "/foo", Host="example.com:80")
        assert (a.status, a.headers.get("location")) == (301, "https://example.com/foo")


def test_strip_that_takes_the_whole_path_leaves_path_empty_in_a_redirect() -> None:
    """`strip=/foo` then `redirect=301,https://bar.com/bbb$path`: `/foo` goes to `https://bar.com/bbb`."""
    routes = ('route add svc /foo https://bar.com/bbb$path opts "redirect=301 strip=/foo"\n'
              'route add svc /pre https://bar.com/bbb$path opts "redirect=302 strip=/pre prepend=/x"')
    with RouterProc.static(routes) as r:
        for path, location in [("/foo", "https://bar.com/bbb"), ("/foo/", "https://bar.com/bbb/"),
                               ("/foo/a?q=1", "https://bar.com/bbb/a?q=1"), ("/pre", "https://bar.com/bbb/x")]:
            a = get(r.url + path)
            assert a.status in (301, 302) and a.headers["location"] == location, path


@pytest.mark.parametrize("status", ["999", "600"])
def test_every_noroute_status_the_config_accepts_is_sent(status: str) -> None:
    """fabio's range for proxy.noroutestatus is 100-999 (TestProxyNoRouteStatus uses 999)."""
    with RouterProc.static("route add svc /x http://127.0.0.1:1/", "-proxy.noroutestatus", status) as r:
        a = get(r.url + "/nothing")
        assert a.status == int(status) and a.body == b"no route\n"


def test_forwarded_proto_fills_in_x_forwarded_proto(backend: Server) -> None:
    """`Forwarded: for=1.2.3.4; proto=https` and no X-Forwarded-Proto: fabio sends X-Forwarded-Proto https."""
    with RouterProc.static(f"route add svc / {backend.url}/") as r:
        assert get(r.url + "/a", Forwarded="for=1.2.3.4; proto=https").status == 200
        assert backend.seen[-1][1]["x-forwarded-proto"] == "https"
        assert get(r.url + "/b").status == 200
        assert backend.seen[-1][1]["x-forwarded-proto"] == "http"
        assert get(r.url + "/c", Forwarded="for=1.2.3.4; proto=https", **{"X-Forwarded-Proto": "http"}).status == 200
        assert backend.seen[-1][1]["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("value", ["x:10.0.0.0/8", "ip:10/8", "ip:10.0.0.0/255"])
def test_malformed_access_rules_refuse_the_route_and_are_reported(backend: Server, value: str) -> None:
    """fabio logs a malformed allow=/deny= value and serves the route without rules; we refuse that route
    (docs/compat.md: a typo must not open a protected route) and say so under errors in /api/status, and
    every other route keeps working."""
    routes = (f'route add svc /guarded {backend.url}/ opts "allow={value}"\n'
              f'route add svc /denied {backend.url}/ opts "deny={value}"\n'
              f"route add svc /open {backend.url}/")
    with RouterProc.static(routes) as r:
        assert get(r.url + "/open").status == 200
        assert get(r.url + "/guarded").status == 404
        assert get(r.url + "/denied").status == 404
        errors = httpx.get(r.ui + "/api/status").json()["errors"]["table"]
        for option, path in (("allow", "/guarded"), ("deny", "/denied")):
            mine = [e for e in errors if f"{option}={value}" in e]
            assert len(mine) == 1 and path in mine[0] and "invalid access rules" in mine[0]
            assert value.split(":")[0] in mine[0].split("invalid access rules")[1]
