"""`registry.consul.noroutehtmlpath`: the no-route page body comes from Consul KV and follows edits."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.consul_helpers import make_client, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul


def test_noroute_page_from_kv(consul_agent) -> None:  # type: ignore[no-untyped-def]
    c = make_client(consul_agent.port)
    base = f"t-{uuid.uuid4().hex[:8]}"
    with RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath", f"/{base}/config",
                    "-registry.consul.noroutehtmlpath", f"/{base}/noroute.html", "-proxy.noroutestatus", "410") as r:
        first = httpx.get(r.url + "/nothing")
        assert first.status_code == 410 and first.headers["content-type"].startswith("text/plain")
        c.kv.put(f"{base}/noroute.html", "<h1>gone</h1>")
        resp = wait_until(lambda: (x := httpx.get(r.url + "/nothing")).text == "<h1>gone</h1>" and x,
                          message="no-route page not picked up")
        assert resp.status_code == 410 and resp.headers["content-type"].startswith("text/html")
        c.kv.put(f"{base}/noroute.html/part2", "<p>more</p>")  # a prefix: sub-keys are appended
        wait_until(lambda: httpx.get(r.url + "/nothing").text == "<h1>gone</h1><p>more</p>")
        c.kv.delete(f"{base}/noroute.html", recurse=True)
        wait_until(lambda: httpx.get(r.url + "/nothing").headers["content-type"].startswith("text/plain"),
                   message="plain-text answer not restored after the key was deleted")
