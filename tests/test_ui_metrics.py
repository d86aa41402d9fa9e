"""/metrics reports the table and registry state: static backend and in-process registry status (no Consul
needed), a router whose Consul refuses connections, and a change watched on a real agent."""

from __future__ import annotations

import asyncio
import math
import time
import types
import warnings

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.consul import status as consul_status
from router.config.settings import load
from router.run.router import Router
from tests.consul_helpers import make_client, register, wait_until
from tests.router_proc import RouterProc, free_port
from tests.test_consul_routing import router_for, uid

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


def labelled(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_registry_errors_sync_age_and_propagation_from_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the RegistryStatus the Consul watcher feeds (error(), synced(), propagated()) -> /metrics.
    The watcher's wall clock is frozen, so the exported sync age is exactly the one set."""
    now = time.time()
    monkeypatch.setattr(consul_status, "time", types.SimpleNamespace(time=lambda: now, monotonic=time.monotonic))
    router = Router(load(["-registry.consul.addr", "127.0.0.1:1"]))  # never started: no request is made
    st = router.status
    with TestClient(router.ui) as client:
        m = samples(client.get("/metrics").text)
        assert math.isnan(m["consul_router_registry_last_sync_age_seconds"])  # never synced
        assert m["consul_router_registry_errors_total"] == 0 and m["consul_router_propagations_total"] == 0
        assert not any(k.startswith("consul_router_propagation_delay_ms") for k in m)  # no quantiles yet
        st.synced()
        st.error("health watch: connection refused")
        st.error("kv watch: HTTP 500")
        st.last_sync = now - 42  # the last good answer was 42 s ago
        for ms in (5.0, 10.0, 100.0):
            st.propagated(ms)
        text = client.get("/metrics").text
        status = client.get("/api/status").json()["registry"]
    m, q = samples(text), labelled(text)
    assert m["consul_router_registry_errors_total"] == 2 == status["error_count"]
    assert m["consul_router_registry_connected"] == 0  # an error after the sync: not connected
    assert m["consul_router_registry_last_sync_age_seconds"] == 42.0 == status["sync_age_seconds"]
    assert m["consul_router_propagations_total"] == 3
    delay = {dict(k[1])["quantile"]: v for k, v in q.items() if k[0] == "consul_router_propagation_delay_ms"}
    assert delay == {"0.5": 10.0, "0.9": 100.0, "1": 100.0}
    assert status["propagation"] == {"count": 3, "last_ms": 100.0, "p50_ms": 10.0, "p90_ms": 100.0, "max_ms": 100.0}


def scrape(r: RouterProc) -> dict[str, float]:
    return samples(httpx.get(r.ui + "/metrics", timeout=5).text)


def test_unreachable_consul_counts_watch_errors() -> None:
    """A real router whose Consul address refuses connections: errors counted, never synced, not connected."""
    with RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", wait_ready=False) as r:
        wait_until(lambda: scrape(r)["consul_router_registry_errors_total"] >= 2)
        m = scrape(r)
        assert m["consul_router_registry_connected"] == 0 and m["consul_router_ready"] == 0
        assert math.isnan(m["consul_router_registry_last_sync_age_seconds"])
        errors = httpx.get(r.ui + "/api/status", timeout=5).json()["registry"]["recent_errors"]
        assert errors and all(e["error"].startswith("initial sync") for e in errors)


@pytest.mark.consul
def test_real_watch_change_is_a_propagation(consul_agent) -> None:
    """On a real agent: a registration after start is one more table swap with a measured delay."""
    c = make_client(consul_agent.port)
    with router_for(consul_agent) as r:
        before = scrape(r)
        assert before["consul_router_registry_connected"] == 1 and before["consul_router_registry_errors_total"] == 0
        assert not math.isnan(before["consul_router_registry_last_sync_age_seconds"])  # synced (NaN: never)
        svc = f"prop-{uid()}"
        register(c, svc, svc, 5005, tags=[f"urlprefix-/{svc}"])
        wait_until(lambda: scrape(r)["consul_router_propagations_total"] > before["consul_router_propagations_total"])
        text = httpx.get(r.ui + "/metrics", timeout=5).text
        delay = {dict(k[1])["quantile"]: v for k, v in labelled(text).items()
                 if k[0] == "consul_router_propagation_delay_ms"}
        assert set(delay) == {"0.5", "0.9", "1"} and 0 <= delay["0.5"] <= delay["0.9"] <= delay["1"]
        assert samples(text)["consul_router_registry_requests_total"] > before["consul_router_registry_requests_total"]
