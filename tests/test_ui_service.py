"""/api/services/<name>: instances with their health verdicts, and why a tagged service is not routed."""

from __future__ import annotations

import httpx
import pytest

from tests.consul_helpers import kv_put, make_client, register, wait_until
from tests.test_consul_routing import router_for, uid

pytestmark = pytest.mark.consul


def detail(r, name: str) -> dict:  # type: ignore[no-untyped-def]
    return httpx.get(f"{r.ui}/api/services/{name}", timeout=5).json()


def test_why_not_routed(consul_agent) -> None:
    c = make_client(consul_agent.port)
    ok, sick, cut, bad = (f"{n}-{uid()}" for n in ("ok", "sick", "cut", "bad"))
    register(c, ok, ok, 5001, tags=[f"urlprefix-/{ok}"])
    register(c, sick, sick, 5002, tags=[f"urlprefix-/{sick}"], status="critical")
    register(c, cut, cut, 5003, tags=[f"urlprefix-/{cut}"])
    register(c, bad, bad, 5004, tags=["urlprefix-"])
    r = router_for(consul_agent)
    kvpath = r.flags[r.flags.index("-registry.consul.kvpath") + 1].strip("/")
    kv_put(c, kvpath, f"route del {cut}\n")
    with r:
        wait_until(lambda: detail(r, ok).get("routes"))
        d = detail(r, ok)
        assert d["why_not_routed"] == [] and d["instances"][0]["routed"] is True
        assert d["routes"][0]["src"] == f"/{ok}"
        wait_until(lambda: detail(r, sick).get("why_not_routed"))
        d = detail(r, sick)
        assert d["instances"][0]["routed"] is False and d["instances"][0]["reason"]
        assert "no instance may receive traffic" in d["why_not_routed"][0]
        wait_until(lambda: detail(r, cut).get("why_not_routed"))
        assert "removed by an override" in detail(r, cut)["why_not_routed"][0]
        wait_until(lambda: detail(r, bad).get("why_not_routed"))
        d = detail(r, bad)
        assert "no valid route tag" in d["why_not_routed"][0] and d["tag_errors"]
        assert httpx.get(f"{r.ui}/api/services/nosuch-{uid()}").status_code == 404
        page = httpx.get(f"{r.ui}/service?name={ok}")
        assert page.status_code == 200 and "/api/services/" in page.text
