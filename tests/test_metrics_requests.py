"""Per-route request metrics through the real router: counters, histogram, status classes, no-route,
bounded labels, the routes API's rate1/pct99, and the sums over `-proxy.workers 2`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.proxy.stats import BOUNDS, RateWindow, RouteStats, merge, quantile
from tests.backends import Backend
from tests.consul_helpers import wait_until
from tests.router_proc import RouterProc

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(r: RouterProc) -> dict[Sample, float]:
    text = httpx.get(r.ui + "/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: dict[Sample, float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(cond: Callable[[], object], what: str, timeout: float = 15.0) -> object:
    return wait_until(cond, timeout=timeout, interval=0.1, message=f"timed out waiting for {what}")


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("a").start()
    yield b
    b.stop()


def test_requests_are_counted_per_route(backend: Backend) -> None:
    target = f"http://127.0.0.1:{backend.port}/"
    routes = f"route add svc-a /a {target}\nroute add svc-dead /dead http://127.0.0.1:1/"
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes) as r, httpx.Client() as c:
        for i in range(100):  # 100 distinct raw paths under one route
            assert c.get(f"{r.url}/a/item/{i}?q={i}").status_code == 200
        for _ in range(3):
            assert c.get(f"{r.url}/a/status?code=404").status_code == 404
        assert c.get(f"{r.url}/dead/x").status_code == 502
        assert c.get(f"{r.url}/nowhere").status_code == 404
        m = scrape(r)
        labels = {"service": "svc-a", "route": "/a", "target": target}
        assert value(m, "consul_router_requests_total", **labels) == 103
        assert value(m, "consul_router_request_duration_seconds_count", **labels) == 103
        assert value(m, "consul_router_request_duration_seconds_bucket", **labels, le="+Inf") == 103
        assert value(m, "consul_router_request_duration_seconds_sum", **labels) != 0  # observed, not left at 0
        assert value(m, "consul_router_responses_total", **labels, code="2xx") == 100
        assert value(m, "consul_router_responses_total", **labels, code="4xx") == 3
        dead = {"service": "svc-dead", "route": "/dead", "target": "http://127.0.0.1:1/"}
        assert value(m, "consul_router_responses_total", **dead, code="5xx") == 1
        assert value(m, "consul_router_upstream_connect_failures_total") >= 1
        assert value(m, "consul_router_noroute_total") == 1
        # bounded: the 100 raw paths gave one label set, and only routes are label values
        keys = {k for k in m if k[0] == "consul_router_requests_total"}
        assert {dict(k[1])["route"] for k in keys} == {"/a", "/dead"}

        # the routes API carries fabio's rate1/pct99 for the route that saw traffic
        rows = httpx.get(r.ui + "/api/routes", timeout=5).json()
        row = next(x for x in rows if x["src"] == "/a")
        assert row["rate1"] > 0 and row["pct99"] > 0
        assert next(x for x in rows if x["src"] == "/dead")["rate1"] > 0


def test_two_workers_sum_to_what_the_backend_saw(backend: Backend) -> None:
    target = f"http://127.0.0.1:{backend.port}/"
    routes = f"route add svc-a /a {target}"
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.workers", "2") as r:
        workers = lambda: httpx.get(r.ui + "/api/status", timeout=5).json()["workers"]  # noqa: E731
        wait_for(lambda: all(w["routes"] == 1 for w in workers()), "both workers to have the table")
        sent = 0
        while not all(w["requests"] > 0 for w in workers()):  # fresh connections spread over both workers
            for _ in range(20):
                assert httpx.get(r.url + "/a/x", headers={"Connection": "close"}, timeout=5).status_code == 200
                sent += 1
            time.sleep(0.6)
            assert sent < 400, "one worker never served"
        assert httpx.get(r.url + "/none", timeout=5).status_code == 404
        labels = {"service": "svc-a", "route": "/a", "target": target}

        def reported() -> dict | None:
            m = scrape(r)
            done = value(m, "consul_router_noroute_total") == 1 and value(
                m, "consul_router_requests_total", **labels) == sent
            return m if done else None

        m = wait_for(reported, "the workers' reports to add up")
        assert value(m, "consul_router_requests_total", **labels) == sent == len(backend.requests)  # type: ignore[arg-type]
        assert value(m, "consul_router_responses_total", **labels, code="2xx") == sent  # type: ignore[arg-type]


def test_stats_units() -> None:
    """Histogram slots, quantile, merging and the rate window, without a router."""
    rs = RouteStats(("s", "/a", "http://x/"))
    for _ in range(99):
        rs.record(200, 0.0001)
    rs.record(503, 20.0)  # beyond the last bound: the +Inf slot
    n, total, buckets, classes = rs.snapshot()
    assert n == 100 and buckets[0] == 99 and buckets[-1] == 1 and classes == (0, 99, 0, 0, 1)
    assert quantile(0.99, buckets) <= BOUNDS[0] and quantile(1.0, buckets) == BOUNDS[-1]
    both = merge([{rs.key: rs.snapshot()}, {rs.key: rs.snapshot()}])
    assert both[rs.key][0] == 200 and both[rs.key][2][0] == 198
    w = RateWindow(window=60)
    w.tick({}, now=0.0)
    w.tick({rs.key: rs.snapshot()}, now=30.0)
    rate, p99 = w.rates({rs.key: rs.snapshot()}, now=50.0)[rs.key]
    assert rate == 100 / 50 and 0 < p99 <= BOUNDS[0] * 1000
    w.tick({rs.key: rs.snapshot()}, now=95.0)  # the 0 s snapshot falls out of the window
    assert w.rates({rs.key: rs.snapshot()}, now=100.0) == {}


def test_open_websockets_gauge(backend: Backend) -> None:
    routes = f"route add svc-a /a http://127.0.0.1:{backend.port}/"
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes) as r:

        async def session() -> None:
            async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://127.0.0.1:{r.proxy_port}/a/ws") as ws:
                await ws.send_str("hi")
                assert "hi" in (await ws.receive()).data  # echoed by the backend
                m = await asyncio.to_thread(scrape, r)
                assert value(m, "consul_router_websockets_open") == 1
                assert value(m, "consul_router_websockets_total") == 1

        asyncio.run(session())
        wait_for(lambda: value(scrape(r), "consul_router_websockets_open") == 0, "the tunnel to be counted closed")


def test_prune_drops_counters_of_targets_that_left_the_table() -> None:
    from router.proxy.stats import RequestStats, prune
    from router.table.builder import TableBuilder
    from router.table.routecmd import parse

    b = TableBuilder()
    cmds, _ = parse("route add a /a http://10.0.0.1:80/\nroute add a /a http://10.0.0.2:80/\n"
                    "route add h h.com/x http://10.0.0.3:80/")
    table, _ = b.update({}, cmds)
    stats = RequestStats()
    for host, path in (("other.test", "/a"), ("h.com", "/x")):
        route = table.lookup(host, path)
        assert route is not None
        for t in route.targets:
            stats.attach(route, t).record(200, 0.01)
    assert len(stats.by_key) == 3
    cmds, _ = parse("route add a /a http://10.0.0.2:80/\nroute add b h.com/x http://10.0.0.3:80/")
    table, _ = b.update({}, cmds)
    stats.prune(table)  # 10.0.0.1 left; h.com/x is service b's now, so h's counter goes too
    assert sorted(stats.by_key) == [("a", "/a", "http://10.0.0.2:80/")]
    snaps = {("a", "/a", "http://10.0.0.2:80/"): stats.by_key[("a", "/a", "http://10.0.0.2:80/")].snapshot(),
             ("gone", "/z", "http://10.0.0.9:80/"): (1, 0.1, (0,) * (len(BOUNDS) + 1), (0, 1, 0, 0, 0))}
    prune(snaps, table)
    assert list(snaps) == [("a", "/a", "http://10.0.0.2:80/")]
    prune(snaps, None)  # no table yet: nothing is dropped
    assert len(snaps) == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_of_a_target_that_left_the_table_disappear(tmp_path, workers: str) -> None:
    """Instances come and go (new container addresses): their series must not pile up in /metrics."""
    a, b = Backend("a").start(), Backend("b").start()
    routes = tmp_path / "routes.txt"
    routes.write_text(f"route add svc /p http://127.0.0.1:{a.port}/\n")
    try:
        with RouterProc("-registry.backend", "file", "-registry.file.path", str(routes),
                        "-proxy.workers", workers) as r, httpx.Client() as c:
            old = {"service": "svc", "route": "/p", "target": f"http://127.0.0.1:{a.port}/"}
            new = {"service": "svc", "route": "/p", "target": f"http://127.0.0.1:{b.port}/"}
            for _ in range(5):
                assert c.get(r.url + "/p", headers={"Connection": "close"}).text.strip() == "a"
            wait_for(lambda: value(scrape(r), "consul_router_requests_total", **old) == 5, "old target counted")
            routes.write_text(f"route add svc /p http://127.0.0.1:{b.port}/\n")
            wait_for(lambda: c.get(r.url + "/p", headers={"Connection": "close"}).text.strip() == "b", "reload")
            wait_for(lambda: value(scrape(r), "consul_router_requests_total", **new), "new target counted")
            m = scrape(r)
            assert value(m, "consul_router_requests_total", **old) == 0  # gone, not kept at 5
            assert not [k for k in m if ("target", old["target"]) in k[1]]
    finally:
        a.stop()
        b.stop()
