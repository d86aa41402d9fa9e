"""Hot-service watches (registry/consul/hot.py) against a real agent: a change that none of the bulk watches
shows (one of two passing instances deregistered, the tag union unchanged) reaches the table through the
service's own blocking query, without the instance reconcile."""

from __future__ import annotations

import asyncio
import time

import pytest

from registry.consul.api import ConsulAPI
from registry.consul.watcher import ConsulWatcher
from tests.consul_helpers import deregister, make_client, register, set_check, uid

pytestmark = pytest.mark.consul


def targets(cmds) -> set[str]:  # type: ignore[no-untyped-def]
    return {c.dst for c in cmds or ()}


async def scenario(agent, hot_limit: int) -> tuple[set[str], set[str], int]:  # type: ignore[no-untyped-def]
    """Two instances; one check flipped (a change the health watch shows: the service becomes hot); then
    instance b deregistered while passing. The reconcile is switched off, so only a hot watch can see it.
    Returns the routed targets before and after the deregistration, and the hot watch count."""
    c = make_client(agent.port)
    svc = f"hot-{uid()}"
    register(c, svc, f"{svc}-a", 10001, tags=[f"urlprefix-/{svc}"])
    register(c, svc, f"{svc}-b", 10002, tags=[f"urlprefix-/{svc}"])
    table: dict[str, set[str]] = {}

    def sink(changes, manual) -> None:  # type: ignore[no-untyped-def]
        for name, cmds in changes.items():
            table[name] = targets(cmds)

    w = ConsulWatcher(ConsulAPI(agent.addr), sink, resync=0, hot_limit=hot_limit)

    async def no_reconcile(since=None) -> None:  # type: ignore[no-untyped-def]
        w._reconcile = False

    w._reconcile_instances = no_reconcile  # type: ignore[method-assign]
    task = asyncio.ensure_future(w.run())
    loop = asyncio.get_running_loop()

    async def until(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            await asyncio.sleep(0.02)
        return False

    try:
        assert await until(lambda: len(table.get(svc, ())) == 2)
        await loop.run_in_executor(None, set_check, c, f"{svc}-a", "critical")
        assert await until(lambda: len(table.get(svc, ())) == 1)
        await loop.run_in_executor(None, set_check, c, f"{svc}-a", "passing")
        assert await until(lambda: len(table.get(svc, ())) == 2)
        before = set(table[svc])
        hot = len(w._rereads.hot)
        await loop.run_in_executor(None, deregister, c, f"{svc}-b")
        await until(lambda: len(table.get(svc, ())) == 1, timeout=3.0)
        return before, set(table[svc]), hot
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.api.close()
        await loop.run_in_executor(None, deregister, c, f"{svc}-a")


def test_a_hidden_deregistration_of_a_hot_service_is_seen_without_the_reconcile(fresh_consul) -> None:
    before, after, hot = asyncio.run(scenario(fresh_consul, hot_limit=32))
    assert hot == 1
    assert len(before) == 2 and len(after) == 1 and after < before
    assert all(t.endswith(":10001/") for t in after)  # b (port 10002) is the one gone


def test_without_hot_watches_the_same_change_waits_for_the_reconcile(fresh_consul) -> None:
    """The control: no hot watch, no reconcile -> the deregistration is not seen (what the dump is for)."""
    before, after, hot = asyncio.run(scenario(fresh_consul, hot_limit=0))
    assert hot == 0
    assert after == before and len(after) == 2


def consul_side_connections(port: int) -> int:
    """Connections the agent on `port` holds (established, or closed by the client and not yet by Consul)."""
    held = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.split(":")[1], 16) == port and state in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
                held += 1
    return held


def test_churned_hot_watches_leave_room_under_consuls_connection_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Consul 1.8 holds a blocking query's connection until its wait ends, even after the client closed it,
    and refuses connections past `limits.http_max_conns_per_client` (200 by default). 60 services made hot
    one after another through 5 watches (10 slots), on an agent allowing 24: Consul holds no more than the
    slots, and ten reads right after all succeed (watches cancelled on eviction held 60 and refused them)."""
    from registry.consul.api import ConsulError
    from registry.consul.hot import HotWatches
    from tests.consul_agent import ConsulAgent

    agent = ConsulAgent(workdir=tmp_path, extra_args=["-hcl", "limits { http_max_conns_per_client = 24 }"])
    agent.start()

    async def run() -> tuple[int, int, list[str]]:
        api, reader = ConsulAPI(agent.addr), ConsulAPI(agent.addr)
        index = (await api.get("/v1/health/service/none")).index
        hot = HotWatches(api, lambda *a: None, limit=5)
        peak = 0
        try:
            for i in range(60):
                hot.touch(f"svc-{i}", index)  # each blocks (no such service: its index never moves)
                await asyncio.sleep(0.02)
                peak = max(peak, consul_side_connections(agent.port))
            outstanding = hot.outstanding()
            results = await asyncio.gather(*(reader.get("/v1/catalog/services") for _ in range(10)),
                                           return_exceptions=True)
            return peak, outstanding, [str(r) for r in results if isinstance(r, ConsulError)]
        finally:
            hot.clear()
            await api.close()
            await reader.close()

    try:
        peak, outstanding, refused = asyncio.run(run())
    finally:
        agent.stop()
    assert outstanding == 10
    assert peak <= 10 + 1  # the slots and the first read's idle connection
    assert refused == []


def test_the_hot_watch_limit_is_set_by_its_key_and_shown_in_status(consul_agent) -> None:  # type: ignore[no-untyped-def]
    """`registry.consul.hotwatches` sets the limit (slots: twice it); /api/status shows the watches kept."""
    import httpx

    from tests.consul_helpers import wait_until
    from tests.router_proc import RouterProc

    c = make_client(consul_agent.port)
    svc = f"hotkey-{uid()}"
    register(c, svc, f"{svc}-a", 10001, tags=[f"urlprefix-/{svc}"])
    router = RouterProc.consul(consul_agent.addr, "-registry.consul.hotwatches", "3").start()

    def hot() -> dict:  # type: ignore[type-arg]
        return httpx.get(router.ui + "/api/status", timeout=5).json()["registry"]["hot_watches"]

    try:
        assert hot()["limit"] == 3 and hot()["slots"] == 6
        set_check(c, f"{svc}-a", "critical")  # a change: the service is re-read and gets its watch
        wait_until(lambda: hot()["watching"] >= 1, message="a hot watch")
        assert hot()["watching"] <= 3
    finally:
        router.stop()
        deregister(c, f"{svc}-a")
