"""Correctness under churn on a real Consul (issue 3): the table ends up equal to what Consul says.

`test_churn_converges` runs the issue's full 20 s of churn (5 of the 100 services changed every 50 ms,
about 2,000 changes) in `make test`.
"""

from __future__ import annotations

import random
import time
import uuid

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import deregister, kv_put, make_client, register, set_check, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul


def uid() -> str:
    return uuid.uuid4().hex[:8]


def router_for(agent) -> RouterProc:  # type: ignore[no-untyped-def]
    return RouterProc("-registry.consul.addr", agent.addr, "-registry.consul.kvpath", f"/t-{uid()}/config")


def table_rows(router: RouterProc, prefix: str) -> set[tuple[str, str, str]]:
    """(service, src, dst) of every route in the router's table whose service starts with prefix."""
    rows = httpx.get(router.ui + "/api/routes", timeout=5).json()
    return {(r["service"], r["src"], r["dst"]) for r in rows if r["service"].startswith(prefix)}


def consul_rows(http_url: str, prefix: str) -> set[tuple[str, str, str]]:
    """What Consul reports: for every service starting with prefix, its passing instances' urlprefix routes."""
    with httpx.Client(base_url=http_url, timeout=10, trust_env=False) as c:
        names = [n for n in c.get("/v1/catalog/services").json() if n.startswith(prefix)]
        out = set()
        for n in names:
            for e in c.get(f"/v1/health/service/{n}", params={"passing": ""}).json():
                s = e["Service"]
                for t in s["Tags"]:
                    if t.startswith("urlprefix-"):
                        out.add((n, t[len("urlprefix-"):], f"http://{s['Address']}:{s['Port']}/"))
        return out



def test_deregister_three_of_four_leaves_exactly_one(consul_agent, backends) -> None:
    """fabio #616: after deregistering 3 of 4 instances exactly the survivor is routed."""
    c = make_client(consul_agent.port)
    svc, path = f"four-{uid()}", f"/four-{uid()}"
    bs = [Backend(f"i{i}").start() for i in range(4)]
    backends.extend(bs)
    for i, b in enumerate(bs):
        register(c, svc, f"{svc}-{i}", b.port, tags=[f"urlprefix-{path}"])
    with router_for(consul_agent) as r:
        wait_until(lambda: len(table_rows(r, svc)) == 4, message="4 routes")
        for i in range(3):
            deregister(c, f"{svc}-{i}")
        wait_until(lambda: len(table_rows(r, svc)) == 1, message="exactly 1 route")
        assert table_rows(r, svc) == {(svc, path, f"http://127.0.0.1:{bs[3].port}/")}
        answers = {httpx.get(r.url + path, timeout=5).text.strip() for _ in range(20)}
        assert answers == {"i3"}


def _churn(agent, seconds: float, services: int = 100, tick: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    c = make_client(agent.port)
    prefix = f"churn-{uid()}-"
    rng = random.Random(42)
    names = [f"{prefix}{i:03d}" for i in range(services)]
    port = {n: 21000 + i for i, n in enumerate(names)}
    for n in names:
        register(c, n, f"{n}-a", port[n], tags=[f"urlprefix-/{n}"])
    with router_for(agent) as r:
        wait_until(lambda: table_rows(r, prefix) == consul_rows(agent.http_url, prefix), timeout=30,
                   message="initial routes")
        present = dict.fromkeys(names, True)
        end = time.monotonic() + seconds
        changes = 0
        while time.monotonic() < end:
            for n in rng.sample(names, 5):
                action = rng.choice(("pass", "fail", "retag", "move", "toggle"))
                if not present[n]:
                    register(c, n, f"{n}-a", port[n], tags=[f"urlprefix-/{n}"])
                    present[n] = True
                elif action in ("pass", "fail"):
                    set_check(c, f"{n}-a", "passing" if action == "pass" else "critical")
                elif action == "retag":
                    register(c, n, f"{n}-a", port[n], tags=[f"urlprefix-/{n}/v{rng.randrange(3)}"])
                elif action == "move":  # same checks and tags, new port: must still be picked up
                    port[n] += 1000
                    register(c, n, f"{n}-a", port[n], tags=[f"urlprefix-/{n}"])
                else:
                    deregister(c, f"{n}-a")
                    present[n] = False
                changes += 1
            time.sleep(tick)
        assert changes > 0
        expected = consul_rows(agent.http_url, prefix)
        wait_until(lambda: table_rows(r, prefix) == expected, timeout=30,
                   message=lambda: f"table == consul; diff {table_rows(r, prefix) ^ expected}")
        assert table_rows(r, prefix) == consul_rows(agent.http_url, prefix)


def test_churn_converges(consul_agent) -> None:
    """100 services changing every 50 ms for 20 s: the final table equals Consul's final state."""
    _churn(consul_agent, 20)


def test_index_going_backwards_converges(fresh_consul, backends) -> None:
    """A dev agent restarted loses its data and its index restarts low: the router follows the new state."""
    c = make_client(fresh_consul.port)
    old, new = f"old-{uid()}", f"new-{uid()}"
    b_old, b_new = Backend("old").start(), Backend("new").start()
    backends.extend([b_old, b_new])
    register(c, old, f"{old}-1", b_old.port, tags=[f"urlprefix-/{old}"])
    for i in range(30):  # push the services index well above what the restarted agent will start from
        register(c, "bump", f"bump-{i}", 1000 + i, ttl=False)
        kv_put(c, f"bump/{i}", "x")
    with router_for(fresh_consul) as r:
        wait_until(lambda: table_rows(r, old), message="old service routed")
        before = int(httpx.get(fresh_consul.http_url + "/v1/catalog/services", timeout=5,
                               trust_env=False).headers["X-Consul-Index"])
        fresh_consul.restart()
        c = make_client(fresh_consul.port)
        register(c, new, f"{new}-1", b_new.port, tags=[f"urlprefix-/{new}"])
        after_index = int(httpx.get(fresh_consul.http_url + "/v1/catalog/services", timeout=5,
                                    trust_env=False).headers["X-Consul-Index"])
        assert after_index < before, "the restarted agent's index must be lower for this test to mean anything"
        wait_until(lambda: table_rows(r, "") & {(new, f"/{new}", f"http://127.0.0.1:{b_new.port}/")},
                   timeout=30, message="new service routed")
        wait_until(lambda: not table_rows(r, old), timeout=30, message="old service gone")
        assert httpx.get(r.url + f"/{new}", timeout=5).text.strip() == "new"
        assert httpx.get(r.url + f"/{old}", timeout=5).status_code == 404
