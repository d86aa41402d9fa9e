"""/metrics reports the table and registry state (static backend: no Consul needed)."""

from __future__ import annotations

import asyncio
import warnings

from prometheus_client.parser import text_string_to_metric_families

from router.cli import Router
from router.config import load

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we have and it works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def samples(text: str) -> dict[str, float]:
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_follow_the_table() -> None:
    routes = "route add a /a http://127.0.0.1:5/\nroute add b /b http://127.0.0.1:6/\nroute ad broken"
    router = Router(load(["-registry.backend", "static", "-registry.static.routes", routes]))
    with TestClient(router.ui) as client:
        before = samples(client.get("/metrics").text)
        assert before["consul_router_routes"] == 0 and before["consul_router_ready"] == 0
        asyncio.run(router.registry())
        resp = client.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    after = samples(resp.text)
    assert after["consul_router_routes"] == 2 and after["consul_router_ready"] == 1
    assert "consul_router_build_info" in after
