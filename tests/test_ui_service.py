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


def test_instance_in_maintenance(consul_agent) -> None:
    """Consul's service maintenance (agent API) takes one instance out; the detail says which and why."""
    c = make_client(consul_agent.port)
    svc = f"maint-{uid()}"
    register(c, svc, f"{svc}-1", 5011, tags=[f"urlprefix-/{svc}"])
    register(c, svc, f"{svc}-2", 5012, tags=[f"urlprefix-/{svc}"])
    with router_for(consul_agent) as r:
        wait_until(lambda: len(detail(r, svc).get("routes", [])) == 2)
        assert c.agent.service.maintenance(f"{svc}-1", "true", "kernel upgrade")
        wait_until(lambda: len(detail(r, svc).get("routes", [])) == 1)
        d = detail(r, svc)
        by_id = {i["id"]: i for i in d["instances"]}
        assert by_id[f"{svc}-1"]["routed"] is False and by_id[f"{svc}-1"]["reason"] == "instance is in maintenance"
        assert by_id[f"{svc}-2"]["routed"] is True
        assert d["routes"][0]["dst"].endswith(":5012/") and d["why_not_routed"] == []
        assert httpx.get(f"{r.ui}/api/healthy", timeout=5).json()[svc] == [1, 2]
        # both in maintenance: nothing routed, and the reason names each instance
        assert c.agent.service.maintenance(f"{svc}-2", "true")
        wait_until(lambda: detail(r, svc).get("why_not_routed"))
        d = detail(r, svc)
        assert d["routes"] == [] and f"{svc}-1: instance is in maintenance" in d["why_not_routed"][0]
        assert f"{svc}-2: instance is in maintenance" in d["why_not_routed"][0]
        # out of maintenance: routed again
        assert c.agent.service.maintenance(f"{svc}-1", "false")
        wait_until(lambda: len(detail(r, svc).get("routes", [])) == 1)
        assert {i["id"]: i["routed"] for i in detail(r, svc)["instances"]} == {f"{svc}-1": True, f"{svc}-2": False}
