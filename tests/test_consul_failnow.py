"""A failing check of a hot service is unrouted from the health answer (registry/consul/rereads.py, `_fail_now`),
against a real agent: the service's own hot watch is held silent (its Consul never answers), as when Consul
answers the state watches first, so only the health answer can have done it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from registry.consul.api import ConsulAPI
from registry.consul.fingerprints import nonpassing_fingerprints
from registry.consul.hot import HotWatches
from registry.consul.rereads import ReReads
from registry.consul.services import ServiceRoutes
from registry.consul.status import RegistryStatus
from tests.consul_helpers import deregister, make_client, register, set_check, uid

pytestmark = pytest.mark.consul


@pytest.fixture
def silent_consul() -> Iterator[str]:
    """host:port of a listener that accepts connections and never answers (the kernel's backlog)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def targets(cmds) -> set[str]:  # type: ignore[no-untyped-def]
    return {c.dst for c in cmds or ()}


class Harness:
    """ReReads on the real agent, its hot watches on the silent listener; `table` is what the sink got."""

    def __init__(self, agent_addr: str, silent: str, statuses: tuple[str, ...] = ("passing",)) -> None:
        self.api = ConsulAPI(agent_addr)
        self.status = RegistryStatus(addr=self.api.base_url)
        self.table: dict[str, set[str]] = {}
        routes = ServiceRoutes(self.status, lambda names: None, statuses=statuses)
        self.rr = ReReads(self.api, self.status, self.sink, routes, learn=lambda name, entries: None)
        self.silent_api = ConsulAPI(silent)
        self.rr.hot = HotWatches(self.silent_api, self.rr._accept, count=self.rr._count, on_drop=self.rr._dropped)

    def sink(self, changes, manual) -> None:  # type: ignore[no-untyped-def]
        for name, cmds in changes.items():
            self.table[name] = targets(cmds)

    async def applied_read(self, svc: str) -> tuple[list, int]:
        """A re-read of `svc` as the fetch loop makes it: read, hot watch started, accepted, flushed."""
        entries, index = await self.rr.read(svc)
        self.rr.hot.touch(svc, index)
        self.rr._accept(svc, entries, index, None)
        await asyncio.sleep(0)  # _flush
        return entries, index

    async def health_answer(self, svc: str) -> None:
        """The two state watches' answers now, handed over as the watcher does (synchronously)."""
        rs = [await self.api.get(f"/v1/health/state/{state}") for state in ("critical", "warning")]
        checks = [c for r in rs for c in r.body or ()]
        fps = nonpassing_fingerprints(checks, {}, {svc}, "urlprefix-")
        self.rr.enqueue({svc} if svc in fps or svc in self.rr._health else set(), None, max(r.index for r in rs),
                        fps, checks)

    async def close(self) -> None:
        self.rr.hot.clear()
        await self.api.close()
        await self.silent_api.close()


async def _unrouted_at_once(agent, silent: str) -> None:  # type: ignore[no-untyped-def]
    c = make_client(agent.port)
    svc = f"failnow-{uid()}"
    loop = asyncio.get_running_loop()
    register(c, svc, f"{svc}-a", 10001, tags=[f"urlprefix-/{svc}"])
    register(c, svc, f"{svc}-b", 10002, tags=[f"urlprefix-/{svc}"])
    h = Harness(agent.addr, silent)
    try:
        before, before_index = await h.applied_read(svc)
        assert len(h.table[svc]) == 2
        await loop.run_in_executor(None, set_check, c, f"{svc}-a", "critical")
        await h.health_answer(svc)
        # in the same turn: the failing instance's routes are ready for the table, nothing is re-read
        assert h.status.failed_now == 1
        assert {t for t in targets(h.rr._ready.get(svc))} == {t for t in h.table[svc] if ":10002/" in t}
        assert svc not in h.rr.pending
        await asyncio.sleep(0)
        assert len(h.table[svc]) == 1 and all(t.endswith(":10002/") for t in h.table[svc])
        # a re-read answered before the failure (in flight meanwhile) does not bring the instance back
        h.rr._accept(svc, before, before_index, None)
        await asyncio.sleep(0)
        assert all(t.endswith(":10002/") for t in h.table[svc])
        # the service's own answer (its index is at least the check's) replaces the patched entries; the
        # same listing again changes nothing
        after, _ = await h.applied_read(svc)
        assert h.rr._entries[svc] is after
        await h.health_answer(svc)
        await asyncio.sleep(0)
        assert h.status.failed_now == 1 and all(t.endswith(":10002/") for t in h.table[svc])
    finally:
        await h.close()
        for sid in ("a", "b"):
            await loop.run_in_executor(None, deregister, c, f"{svc}-{sid}")


def test_a_failing_check_of_a_hot_service_is_unrouted_from_the_health_answer(consul_agent, silent_consul) -> None:
    asyncio.run(_unrouted_at_once(consul_agent, silent_consul))


async def _not_routed_from_a_listing(agent, silent: str) -> None:  # type: ignore[no-untyped-def]
    c = make_client(agent.port)
    svc = f"failnow-{uid()}"
    loop = asyncio.get_running_loop()
    register(c, svc, f"{svc}-a", 10001, tags=[f"urlprefix-/{svc}"], status="critical")
    register(c, svc, f"{svc}-b", 10002, tags=[f"urlprefix-/{svc}"])
    h = Harness(agent.addr, silent)
    try:
        await h.applied_read(svc)
        assert all(t.endswith(":10002/") for t in h.table[svc])
        # a left the critical list: passed, or deregistered? Only the service's own answer tells
        await loop.run_in_executor(None, set_check, c, f"{svc}-a", "passing")
        await h.health_answer(svc)
        await asyncio.sleep(0)
        assert h.status.failed_now == 0
        assert all(t.endswith(":10002/") for t in h.table[svc])
        assert svc in h.rr._expect  # waiting for its hot watch, as before
    finally:
        await h.close()
        for sid in ("a", "b"):
            await loop.run_in_executor(None, deregister, c, f"{svc}-{sid}")


def test_a_check_that_left_the_critical_list_is_not_routed_from_it(consul_agent, silent_consul) -> None:
    asyncio.run(_not_routed_from_a_listing(consul_agent, silent_consul))


async def _warning_routable(agent, silent: str) -> None:  # type: ignore[no-untyped-def]
    """With warning counted healthy (registry.consul.service.status), critical -> warning would add a
    route: that is left to the service's own answer."""
    c = make_client(agent.port)
    svc = f"failnow-{uid()}"
    loop = asyncio.get_running_loop()
    register(c, svc, f"{svc}-a", 10001, tags=[f"urlprefix-/{svc}"], status="critical")
    register(c, svc, f"{svc}-b", 10002, tags=[f"urlprefix-/{svc}"])
    h = Harness(agent.addr, silent, statuses=("passing", "warning"))
    try:
        await h.applied_read(svc)
        assert all(t.endswith(":10002/") for t in h.table[svc])
        await loop.run_in_executor(None, set_check, c, f"{svc}-a", "warning")
        await h.health_answer(svc)
        await asyncio.sleep(0)
        assert h.status.failed_now == 0
        assert all(t.endswith(":10002/") for t in h.table[svc])
    finally:
        await h.close()
        for sid in ("a", "b"):
            await loop.run_in_executor(None, deregister, c, f"{svc}-{sid}")


def test_a_failing_check_turning_routable_is_left_to_the_service_answer(consul_agent, silent_consul) -> None:
    asyncio.run(_warning_routable(consul_agent, silent_consul))


async def _cold_service(agent, silent: str) -> None:  # type: ignore[no-untyped-def]
    c = make_client(agent.port)
    svc = f"failnow-{uid()}"
    loop = asyncio.get_running_loop()
    register(c, svc, f"{svc}-a", 10001, tags=[f"urlprefix-/{svc}"])
    h = Harness(agent.addr, silent)
    try:
        await h.applied_read(svc)
        h.rr.hot.clear()  # no longer hot: its entries are not kept
        await loop.run_in_executor(None, set_check, c, f"{svc}-a", "critical")
        await h.health_answer(svc)
        assert h.status.failed_now == 0
        assert svc in h.rr.pending  # re-read, as before
    finally:
        await h.close()
        await loop.run_in_executor(None, deregister, c, f"{svc}-a")


def test_a_service_without_a_hot_watch_is_re_read(consul_agent, silent_consul) -> None:
    asyncio.run(_cold_service(consul_agent, silent_consul))
