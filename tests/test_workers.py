"""`-proxy.workers 2`: two proxy processes fed by the one registry source of the main process.

Each worker reports its pid, its table size and how many requests it served to the main process,
which lists them in /api/status; the tests check those reports against what the backends saw.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.backends import Backend
from tests.consul_faults import ConsulRelay
from tests.consul_helpers import deregister, make_client, register, uid
from tests.router_proc import RouterProc, pid_alive


def wait_for(cond: Callable[[], object], what: str, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def workers(r: RouterProc) -> list[dict]:
    return httpx.get(r.ui + "/api/status", timeout=5).json()["workers"]




@pytest.fixture
def backends() -> list[Backend]:
    bs = [Backend("a").start(), Backend("b").start()]
    yield bs
    for b in bs:
        b.stop()


def test_two_workers_serve_and_follow_table_changes(tmp_path: Path, backends: list[Backend]) -> None:
    a, b = backends
    routes = tmp_path / "routes.txt"
    routes.write_text(f"route add svc-a /a http://127.0.0.1:{a.port}/\n")
    with RouterProc("-registry.backend", "file", "-registry.file.path", str(routes), "-proxy.workers", "2") as r:
        ws = workers(r)
        assert len(ws) == 2 and len({w["pid"] for w in ws}) == 2 and r.proc is not None
        assert all(w["pid"] != r.proc.pid and w["alive"] for w in ws)
        wait_for(lambda: all(w["routes"] == 1 for w in workers(r)), "both workers to have the first table")

        # fresh connections: the kernel spreads them over both workers' SO_REUSEPORT sockets
        sent = 0
        while not all(w["requests"] > 0 for w in workers(r)):
            for _ in range(20):
                resp = httpx.get(r.url + "/a/x", headers={"Connection": "close"}, timeout=5)
                assert resp.status_code == 200 and resp.text == "a\n"
                sent += 1
            time.sleep(0.6)  # workers report every 0.5 s
            assert sent < 400, f"one worker never served: {workers(r)}"
        assert sum(w["requests"] for w in workers(r)) == sent == a.hits

        # a table change in the one source reaches both workers
        routes.write_text(f"route add svc-a /a http://127.0.0.1:{a.port}/\nroute add svc-b /b http://127.0.0.1:{b.port}/\n")
        wait_for(lambda: all(w["routes"] == 2 for w in workers(r)), "both workers to see the new route")
        for _ in range(20):
            resp = httpx.get(r.url + "/b/y", headers={"Connection": "close"}, timeout=5)
            assert resp.status_code == 200 and resp.text == "b\n"
        assert b.hits == 20


def test_a_killed_worker_is_replaced_with_the_current_table(tmp_path: Path, backends: list[Backend]) -> None:
    a, _ = backends
    routes = f"route add svc-a /a http://127.0.0.1:{a.port}/"
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.workers", "2") as r:
        old = {w["pid"] for w in workers(r)}
        victim = sorted(old)[0]
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: [w for w in workers(r) if w["pid"] not in old and w["routes"] == 1],
                       "a replacement worker with the current table")
        assert len(new) == 1 and len(workers(r)) == 2  # type: ignore[arg-type]
        for _ in range(10):
            assert httpx.get(r.url + "/a/", headers={"Connection": "close"}, timeout=5).status_code == 200


def test_workers_end_with_the_main_process(backends: list[Backend]) -> None:
    a, _ = backends
    routes = f"route add svc-a /a http://127.0.0.1:{a.port}/"
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.workers", "2").start()
    try:
        pids = [w["pid"] for w in workers(r)]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        assert r.proc is not None
        r.proc.kill()  # SIGKILL: no chance to tell the workers; they must notice the pipe closing
        r.proc.wait()
        wait_for(lambda: not any(pid_alive(p) for p in pids), "the workers to exit")
        with pytest.raises(httpx.ConnectError):
            httpx.get(r.url + "/a/", timeout=2)
    finally:
        r.stop()


def test_sigterm_stops_main_and_workers(backends: list[Backend]) -> None:
    a, _ = backends
    routes = f"route add svc-a /a http://127.0.0.1:{a.port}/"
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.workers", "2").start()
    pids = [w["pid"] for w in workers(r)]
    assert r.proc is not None
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(20) == 0
    wait_for(lambda: not any(pid_alive(p) for p in pids), "the workers to exit")


def test_workers_apply_every_route_option_and_pass_websockets(tmp_path: Path, backends: list[Backend]) -> None:
    """Workers build their proxy from the same config as the single-process path: options, upgrades."""
    from tests.test_websocket import upgrade

    a, _ = backends
    routes = tmp_path / "routes.txt"
    routes.write_text(
        f"route add svc-a /open http://127.0.0.1:{a.port}/\n"
        f'route add svc-a /private http://127.0.0.1:{a.port}/ opts "deny=ip:127.0.0.0/8"\n'
    )
    with RouterProc("-registry.backend", "file", "-registry.file.path", str(routes), "-proxy.workers", "2",
                    "-proxy.header.requestid", "X-Request-Id") as r:
        wait_for(lambda: all(w.get("routes") for w in workers(r)), "both workers to have the table")
        for _ in range(10):  # SO_REUSEPORT spreads connections: several tries reach both workers
            assert httpx.get(r.url + "/private/x", timeout=5).status_code == 403
            assert httpx.get(r.url + "/open/x", timeout=5).status_code == 200
            assert len(a.requests[-1].headers.get("x-request-id", "")) == 36
            assert upgrade(r.proxy_port, "/open/ws").startswith(b"HTTP/1.1 101")
        assert all(w["requests"] > 0 for w in workers(r)), workers(r)


class HoldCountingRelay(ConsulRelay):
    """The fault relay in pass mode, counting per path the blocking queries (`index=`) it holds right
    now and the most it held at once since `reset()`: one watcher holds one query per watched path."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.holding: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def reset(self) -> None:
        self.peak = Counter(+self.holding)

    def peaks(self) -> dict[str, int]:
        """Path -> most blocking queries held at once; the router's own KV path shows as /v1/kv/*."""
        out: Counter[str] = Counter()
        for p, n in self.peak.items():
            out["/v1/kv/*" if p.startswith("/v1/kv/") else p] += n
        return dict(+out)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if "index" not in request.query:
            return await super()._handle(request)
        path = request.path
        self.holding[path] += 1
        self.peak[path] = max(self.peak[path], self.holding[path])
        try:
            return await super()._handle(request)
        finally:
            self.holding[path] -= 1


CONSUL_WAIT = 2.0  # registry.consul.wait here: every watch re-issues its query at least this often


def consul_router(relay: ConsulRelay, workers_flag: str) -> RouterProc:
    return RouterProc.consul(relay.addr, "-registry.consul.wait", f"{CONSUL_WAIT:g}s", "-proxy.workers", workers_flag)


def held_queries(relay: HoldCountingRelay, during: Callable[[], None] = lambda: None) -> dict[str, int]:
    """The peak blocking queries per path over a window in which every watch re-issued its query."""
    relay.reset()
    t0 = time.monotonic()
    during()
    time.sleep(max(0.0, 2.5 * CONSUL_WAIT - (time.monotonic() - t0)))
    return relay.peaks()


@pytest.mark.consul
def test_one_consul_watcher_whatever_the_worker_count(consul_agent, backends: list[Backend]) -> None:
    """With -proxy.workers 2 the router holds the same blocking queries on Consul as with one worker (one
    per watched path: one watcher, in the main process), and a service registered after start is routed
    by both workers."""
    c = make_client(consul_agent.port)
    svc = f"onewatch-{uid()}"
    a, _ = backends
    relays = [HoldCountingRelay(consul_agent.http_url).start() for _ in range(2)]
    try:
        with consul_router(relays[0], "1") as single:
            assert httpx.get(single.ui + "/api/status", timeout=5).json()["workers"] is None
            one = held_queries(relays[0])

        with consul_router(relays[1], "2") as r:
            assert len(workers(r)) == 2

            def register_and_wait() -> None:  # while the window runs: the watches answer and re-issue
                register(c, svc, f"{svc}-1", a.port, tags=[f"urlprefix-/{svc}"])
                wait_for(lambda: httpx.get(r.url + f"/{svc}/", timeout=5).status_code == 200, "the new route")

            two = held_queries(relays[1], register_and_wait)
            # a watcher in each worker would hold its own query on every path: 2 or 3 per path. Services
            # that changed during a window also get a watch of their own (registry/consul/hot.py)
            bulk = {p for p in two if not p.startswith("/v1/health/service/")}
            assert bulk == {p for p in one if not p.startswith("/v1/health/service/")} and len(bulk) >= 3, (one, two)
            assert set(one.values()) == {1} and set(two.values()) == {1}, (one, two)

            table = len(httpx.get(r.ui + "/api/routes", timeout=5).json())
            wait_for(lambda: all(w["routes"] == table for w in workers(r)), "both workers to have the table")
            before = {w["pid"]: w["requests"] for w in workers(r)}
            hits, sent = a.hits, 0
            while True:  # fresh connections: the kernel spreads them over both workers' sockets
                for _ in range(20):
                    resp = httpx.get(r.url + f"/{svc}/x", headers={"Connection": "close"}, timeout=5)
                    assert (resp.status_code, resp.text) == (200, "a\n")
                    sent += 1
                time.sleep(0.6)  # workers report every 0.5 s
                now = {w["pid"]: w["requests"] for w in workers(r)}
                if all(now[p] > before[p] for p in before):
                    break
                assert sent < 400, f"one worker never served the new route: {before} -> {now}"
            assert a.hits - hits == sent
    finally:
        deregister(c, f"{svc}-1")
        for relay in relays:
            relay.stop()
