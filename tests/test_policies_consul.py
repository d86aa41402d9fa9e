"""Policy options from Consul: urlprefix- tags and KV override lines on a real agent, through a real router."""

from __future__ import annotations

import http.client

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import kv_put, make_client, register, uid, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_policies_from_tags_and_overrides(consul_agent, backends) -> None:  # type: ignore[no-untyped-def]
    c = make_client(consul_agent.port)
    v1, v2 = Backend("v1").start(), Backend("v2").start()
    backends.extend([v1, v2])
    svc, p, kv = f"pol-{uid()}", f"/pol-{uid()}", f"/t-{uid()}/config"
    register(c, f"{svc}-v1", f"{svc}-v1", v1.port, tags=[f"urlprefix-{p} resphdr.set=X-From:tag%20v1"])
    register(c, f"{svc}-v2", f"{svc}-v2", v2.port, tags=[f"urlprefix-{p} match=X-Version=2"])
    register(c, f"{svc}-bad", f"{svc}-bad", v1.port, tags=[f"urlprefix-{p}/bad ratelimit=lots"])
    kv_put(c, kv.lstrip("/") + "/limits",
           f'route add {svc}-kv {p}/kv http://127.0.0.1:{v1.port}/ opts "ratelimit=1/m,burst=1"\n'
           f'route add {svc}-kv {p}/zz http://127.0.0.1:{v2.port}/ opts "sticky=sometimes"')
    with RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath", kv) as r:
        wait_until(lambda: _get(r.proxy_port, p, {})[0] == 200 and _get(r.proxy_port, p + "/kv", {})[0] in (200, 429))
        status, h, body = _get(r.proxy_port, p, {})
        assert (status, body, h["x-from"]) == (200, b"v1\n", "tag v1")
        assert _get(r.proxy_port, p, {"X-Version": "2"})[2] == b"v2\n"
        assert _get(r.proxy_port, p + "/kv", {})[0] == 429  # the wait_until above took the only token
        assert _get(r.proxy_port, p + "/zz", {})[2] == b"v1\n"  # refused line: /zz is served by the tag route
        st = httpx.get(r.ui + "/api/status", timeout=5).json()["errors"]
        text = " ".join(st["overrides"] + st["table"] + st["tags"])
        assert f"service:{svc}-bad/{svc}-bad" in text and "ratelimit=" in text
        assert "line 2" in text and "sticky=" in text
