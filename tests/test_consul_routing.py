"""Acceptance tests of the walking skeleton on a real Consul agent: tags -> table -> proxy -> UI."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import deregister, kv_put, make_client, register, set_check, uid, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul




def start_backends(started: list[Backend], *names: str) -> list[Backend]:
    new = [Backend(n).start() for n in names]
    started.extend(new)
    return new


def router_for(agent, *flags: str) -> RouterProc:  # type: ignore[no-untyped-def]
    """A router on the shared agent, with its own override path so tests do not see each other's KV."""
    return RouterProc("-registry.consul.addr", agent.addr, "-registry.consul.kvpath", f"/t-{uid()}/config", *flags)


def get(url: str, host: str | None = None) -> httpx.Response:
    return httpx.get(url, headers={"Host": host} if host else None, timeout=5)


def routed_names(url: str, n: int = 1) -> list[str]:
    return [get(url).text.strip() for _ in range(n)]


@pytest.mark.parametrize("strategy", ["rnd", "rr"])
def test_three_instances_share_traffic(consul_agent, backends, strategy: str) -> None:
    """Acceptance 1: 30 concurrent requests reach all three instances; with rr exactly 10 each."""
    c = make_client(consul_agent.port)
    svc, path = f"hello-{uid()}", f"/hello-{uid()}"
    bs = start_backends(backends, "h1", "h2", "h3")
    for i, b in enumerate(bs):
        register(c, svc, f"{svc}-{i}", b.port, tags=[f"urlprefix-{path}"])
    # no per-try timeout: on a loaded machine a hedged copy would add a 31st request to some instance
    with router_for(consul_agent, "-proxy.strategy", strategy, "-proxy.retry.pertrytimeout", "0") as r:
        wait_until(lambda: get(r.url + path).status_code == 200)
        for b in bs:
            b.requests.clear()
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: get(r.url + path).status_code, range(30)))
        assert statuses == [200] * 30
        hits = sorted(b.hits for b in bs)
        assert all(h > 0 for h in hits), hits
        if strategy == "rr":
            assert hits == [10, 10, 10]


def test_critical_instance_gets_nothing_then_returns(consul_agent, backends) -> None:
    """Acceptance 2: a critical check takes the instance out; passing again brings it back."""
    c = make_client(consul_agent.port)
    svc, path = f"crit-{uid()}", f"/crit-{uid()}"
    bs = start_backends(backends, "c1", "c2", "c3")
    for i, b in enumerate(bs):
        register(c, svc, f"{svc}-{i}", b.port, tags=[f"urlprefix-{path}"])
    with router_for(consul_agent, "-proxy.strategy", "rr") as r:
        wait_until(lambda: len(get(r.ui + "/api/routes").json()) >= 3)
        set_check(c, f"{svc}-1", "critical")
        wait_until(lambda: sum(1 for x in get(r.ui + "/api/routes").json() if x["service"] == svc) == 2)
        bs[1].requests.clear()
        names = routed_names(r.url + path, 20)
        assert "c2" not in names and set(names) == {"c1", "c3"}
        assert bs[1].hits == 0
        set_check(c, f"{svc}-1", "passing")
        wait_until(lambda: "c2" in routed_names(r.url + path, 3))


def test_warning_and_status_setting_follow_every_check_state(consul_agent, backends) -> None:
    """The watcher sees passing -> warning -> critical -> passing (two per-state watches); which states
    route is `registry.consul.service.status`: the default routes passing only, `passing,warning` both."""
    c = make_client(consul_agent.port)
    svc, path = f"warn-{uid()}", f"/warn-{uid()}"
    (b,) = start_backends(backends, "w1")
    register(c, svc, f"{svc}-1", b.port, tags=[f"urlprefix-{path}"])
    with router_for(consul_agent) as strict, router_for(consul_agent, "-registry.consul.service.status",
                                                        "passing,warning") as lenient:
        def routed(r: RouterProc) -> bool:
            return get(r.url + path).status_code == 200

        wait_until(lambda: routed(strict) and routed(lenient), message="passing: routed by both")
        for status, by_strict, by_lenient in (("warning", False, True), ("critical", False, False),
                                               ("warning", False, True), ("passing", True, True)):
            set_check(c, f"{svc}-1", status)
            wait_until(lambda: (routed(strict), routed(lenient)) == (by_strict, by_lenient),  # noqa: B023
                       message=f"{status}: strict {by_strict}, lenient {by_lenient}")


def test_host_routes(consul_agent, backends) -> None:
    """Acceptance 3: `urlprefix-mysite.com/foo` needs that host and that prefix."""
    c = make_client(consul_agent.port)
    host = f"mysite-{uid()}.com"
    svc = f"site-{uid()}"
    (b,) = start_backends(backends, "site")
    register(c, svc, svc, b.port, tags=[f"urlprefix-{host}/foo"])
    with router_for(consul_agent) as r:
        wait_until(lambda: get(r.url + "/foo/bar", host).status_code == 200)
        assert get(r.url + "/foo/bar", host).text == "site\n"
        assert get(r.url + "/foo/bar", host.upper() + ":80").status_code == 200  # :80 stripped, case folded
        assert get(r.url + "/fo", host).status_code == 404
        assert get(r.url + "/foo/bar", "other.com").status_code == 404
        assert b.requests[-1].path == "/foo/bar"


def test_deregistration_and_overrides(consul_agent, backends) -> None:
    """Acceptance 4: deregistration -> 404; `route del` in KV removes a route, `route add` adds one."""
    c = make_client(consul_agent.port)
    svc, path = f"kvsvc-{uid()}", f"/kv-{uid()}"
    b1, b2 = start_backends(backends, "k1", "k2")
    register(c, svc, svc, b1.port, tags=[f"urlprefix-{path}"])
    r = router_for(consul_agent)
    kvpath = r.flags[r.flags.index("-registry.consul.kvpath") + 1].strip("/")
    with r:
        wait_until(lambda: get(r.url + path).status_code == 200)
        kv_put(c, f"{kvpath}/a", f"route del {svc}")
        wait_until(lambda: get(r.url + path).status_code == 404)
        kv_put(c, f"{kvpath}/a", f"route add manual-{svc} {path}/extra http://127.0.0.1:{b2.port}/")
        wait_until(lambda: get(r.url + path + "/extra").text == "k2\n")
        assert get(r.url + path).text == "k1\n"  # the del is gone, the service route is back
        deregister(c, svc)
        wait_until(lambda: get(r.url + path).status_code == 404)
        assert get(r.url + path + "/extra").status_code == 200  # the override route stays


def test_consul_paused_keeps_routing(fresh_consul, backends) -> None:
    """Acceptance 5: Consul frozen for 5 s: no failed request; afterwards a new registration is routed."""
    c = make_client(fresh_consul.port)
    svc, path = f"pause-{uid()}", f"/pause-{uid()}"
    (b,) = start_backends(backends, "p1")
    register(c, svc, svc, b.port, tags=[f"urlprefix-{path}"])
    with RouterProc("-registry.consul.addr", fresh_consul.addr, "-registry.consul.wait", "2s") as r:
        wait_until(lambda: get(r.url + path).status_code == 200)
        failures: list[str] = []
        count = itertools.count()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    next(count)
                    try:
                        resp = client.get(r.url + path)
                        if resp.status_code != 200:
                            failures.append(str(resp.status_code))
                    except httpx.HTTPError as e:
                        failures.append(repr(e))
                    time.sleep(0.01)

        t = threading.Thread(target=load)
        t.start()
        try:
            fresh_consul.pause()
            time.sleep(5)
            fresh_consul.resume()
            time.sleep(0.5)
        finally:
            stop.set()
            t.join()
        assert failures == []
        assert next(count) > 100
        (b2,) = start_backends(backends, "p2")
        register(c, f"{svc}-new", f"{svc}-new", b2.port, tags=[f"urlprefix-{path}-new"])
        wait_until(lambda: get(r.url + path + "-new").text == "p2\n", timeout=15)


def test_bad_tags_and_override_lines_are_isolated(consul_agent, backends) -> None:
    """Acceptance 6: garbage in one tag and one override line; everything valid is routed, the bad is reported."""
    c = make_client(consul_agent.port)
    svc, path = f"bad-{uid()}", f"/bad-{uid()}"
    b1, b2 = start_backends(backends, "good", "manual")
    register(c, svc, svc, b1.port,
             tags=[f"urlprefix-{path}", f"urlprefix-{path}-w weight=lots", "urlprefix-", f"urlprefix-{path}-ok x=1"])
    r = router_for(consul_agent)
    kvpath = r.flags[r.flags.index("-registry.consul.kvpath") + 1].strip("/")
    kv_put(c, kvpath, f"route add m-{svc} {path}-m http://127.0.0.1:{b2.port}/\nroute ad oops\n"
                      f"route weight nosuch-{svc} /x weight 0.5")
    with r:
        wait_until(lambda: get(r.url + path + "-m").status_code == 200)
        assert get(r.url + path).text == "good\n"
        assert get(r.url + path + "-ok").text == "good\n"
        assert get(r.url + path + "-m").text == "manual\n"
        status = get(r.ui + "/api/status").json()
        tag_errors = [e for e in status["errors"]["tags"] if svc in e]
        assert any("weight=lots" in e for e in tag_errors), tag_errors
        assert any("empty route" in e for e in tag_errors), tag_errors
        overrides = status["errors"]["overrides"]
        assert any("line 2" in e and "route ad oops" in e for e in overrides), overrides
        table_errors = status["errors"]["table"]
        assert any(f"nosuch-{svc}" in e and "line 3" in e for e in table_errors), table_errors
        services = {s["service"]: s for s in get(r.ui + "/api/services").json()}
        assert services[svc]["instances"][0]["routed"] is True


def test_api_routes_matches_what_is_proxied(consul_agent, backends) -> None:
    """Acceptance 7: /api/routes lists exactly what the proxy routes; /routes renders the page."""
    c = make_client(consul_agent.port)
    svc = f"api-{uid()}"
    b1, b2 = start_backends(backends, "a1", "a2")
    paths = [f"/api-{uid()}", f"/api-{uid()}/sub"]
    register(c, svc, f"{svc}-1", b1.port, tags=[f"urlprefix-{paths[0]}", f"urlprefix-{paths[1]} strip=/x"])
    register(c, svc, f"{svc}-2", b2.port, tags=[f"urlprefix-{paths[0]}"])
    with router_for(consul_agent) as r:
        wait_until(lambda: len([x for x in get(r.ui + "/api/routes").json() if x["service"] == svc]) == 3)
        rows = [x for x in get(r.ui + "/api/routes").json() if x["service"] == svc]
        assert {(x["path"], x["dst"]) for x in rows} == {
            (paths[0], f"http://127.0.0.1:{b1.port}/"),
            (paths[0], f"http://127.0.0.1:{b2.port}/"),
            (paths[1], f"http://127.0.0.1:{b1.port}/"),
        }
        assert next(x for x in rows if x["path"] == paths[1])["opts"] == "strip=/x"
        for x in rows:
            assert x["weight"] == pytest.approx(0.5 if x["path"] == paths[0] else 1.0)
        # every listed route is served by the proxy, by the listed instance(s)
        assert {get(r.url + paths[0]).text for _ in range(20)} == {"a1\n", "a2\n"}
        assert get(r.url + paths[1]).text == "a1\n"
        raw = get(r.ui + "/api/routes?raw").text
        assert f"route add {svc} {paths[1]} http://127.0.0.1:{b1.port}/ opts \"strip=/x\"" in raw
        page = get(r.ui + "/routes")
        assert page.status_code == 200 and "<table" in page.text and "/api/routes" in page.text
