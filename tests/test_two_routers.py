"""Horizontal scale: N router processes on one Consul agent are interchangeable (docs/operators.md).

Two routers with the same configuration serve the same table (identical `/api/routes?raw`); either one
can be stopped while the other serves without a failed request, and the survivor keeps following changes
in Consul (new, failing, removed instances and KV overrides).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import deregister, kv_put, make_client, register, set_check, uid, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul




def raw(r: RouterProc) -> str:
    return httpx.get(r.ui + "/api/routes?raw", timeout=5).text


def same_table(routers: list[RouterProc], must_contain: str = "") -> str:
    tables = [raw(r) for r in routers]
    if len(set(tables)) == 1 and must_contain in tables[0]:
        return tables[0]
    return ""


class Load:
    """Requests in a loop against one router; every non-200 or transport error is recorded."""

    def __init__(self, url: str) -> None:
        self.url, self.failures, self.count = url, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    resp = client.get(self.url)
                    if resp.status_code != 200:
                        self.failures.append(str(resp.status_code))
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                self.count += 1
                time.sleep(0.005)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("stopped", [0, 1], ids=["stop-first", "stop-second"])
def test_two_routers_one_agent(fresh_consul, backends, stopped: int) -> None:
    c = make_client(fresh_consul.port)
    a, b, m = Backend("a").start(), Backend("b").start(), Backend("manual").start()
    backends.extend([a, b, m])
    svc = f"web-{uid()}"
    register(c, svc, f"{svc}-a", a.port, tags=["urlprefix-/web", "urlprefix-api.example/v1 strip=/v1"])
    register(c, svc, f"{svc}-b", b.port, tags=["urlprefix-/web"])
    kv_put(c, "fabio/config", f"route add manual /manual http://127.0.0.1:{m.port}/\nroute weight {svc} /web weight 0.25 tags \"x\"")

    flags = ("-registry.consul.addr", fresh_consul.addr, "-proxy.strategy", "rr")
    routers = [RouterProc(*flags).start(), RouterProc(*flags).start()]
    try:
        table = wait_until(lambda: same_table(routers, "/manual"), message="both routers to load the same table")
        assert table.count("route add") == 4, table
        for r in routers:
            assert httpx.get(r.url + "/manual", timeout=5).text == "manual\n"
            assert {httpx.get(r.url + "/web", timeout=5).text for _ in range(4)} == {"a\n", "b\n"}

        # Stop one under load on the other: the survivor does not notice.
        gone, survivor = routers[stopped], routers[1 - stopped]
        with Load(survivor.url + "/web") as load:
            time.sleep(0.3)
            gone.stop()
            time.sleep(0.5)
        assert gone.proc is not None and gone.proc.returncode == 0, gone.output()
        assert load.failures == [] and load.count > 20, (load.failures[:5], load.count)

        # ... and keeps following Consul.
        n = Backend("new").start()
        backends.append(n)
        register(c, f"new-{svc}", f"new-{svc}", n.port, tags=["urlprefix-/new"])
        wait_until(lambda: httpx.get(survivor.url + "/new", timeout=5).text == "new\n")
        set_check(c, f"{svc}-a", "critical")
        wait_until(lambda: f"127.0.0.1:{a.port}/ " not in raw(survivor) + " ")
        assert {httpx.get(survivor.url + "/web", timeout=5).text for _ in range(4)} == {"b\n"}
        deregister(c, f"{svc}-b")
        wait_until(lambda: httpx.get(survivor.url + "/web", timeout=5).status_code == 404)
        kv_put(c, "fabio/config", "route del manual")
        wait_until(lambda: httpx.get(survivor.url + "/manual", timeout=5).status_code == 404)

        # A router started now builds exactly the survivor's table.
        routers[stopped] = RouterProc(*flags).start()
        final = wait_until(lambda: same_table(routers, "/new"), message="the new router to catch up")
        assert "/manual" not in final and "/web" not in final
    finally:
        for r in routers:
            r.stop()
