"""Self-registration (`registry.consul.register.*`, `register=` aliases) on a real Consul agent."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from registry.consul.api import ConsulAPI
from registry.consul.register import Registrar, Registration
from tests.consul_helpers import make_client, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul


def test_router_registers_with_checks_and_deregisters(consul_agent) -> None:  # type: ignore[no-untyped-def]
    c = make_client(consul_agent.port)
    name = f"fabio-{uuid.uuid4().hex[:6]}"
    r = RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath", f"/{name}/config",
                   "-registry.consul.register.enabled", "true", "-registry.consul.register.name", name,
                   "-registry.consul.register.tags", "edge, lb").start()
    try:
        sid = f"{name}-{socket.gethostname()}-{r.ui_port}"
        svc = wait_until(lambda: c.agent.services().get(sid), message="router never registered")
        assert svc["Service"] == name and svc["Port"] == r.ui_port and svc["Address"] == "127.0.0.1"
        assert sorted(svc["Tags"]) == ["edge", "lb"]
        def passing() -> list[dict] | None:
            mine = [ch for ch in c.agent.checks().values() if ch["ServiceID"] == sid]
            return mine if len(mine) == 2 and all(ch["Status"] == "passing" for ch in mine) else None

        checks = wait_until(passing, message="TTL and /health checks not both passing")
        assert sid + "-ttl" in {ch["CheckID"] for ch in checks}
        assert any(ch["Type"] == "http" for ch in checks)
    finally:
        r.stop()
    assert sid not in c.agent.services(), "not deregistered on shutdown"


def test_registrar_reregisters_and_follows_aliases(consul_agent) -> None:  # type: ignore[no-untyped-def]
    c = make_client(consul_agent.port)
    name = f"main-{uuid.uuid4().hex[:6]}"
    alias = f"alias-{uuid.uuid4().hex[:6]}"
    wanted: set[str] = {alias}

    async def scenario() -> None:
        api = ConsulAPI(consul_agent.addr)
        reg = Registrar(api, Registration(name, "127.0.0.1:1"), alias_source=lambda: set(wanted), interval=0.1)
        task = asyncio.create_task(reg.run())
        host = socket.gethostname()
        main_id, alias_id = f"{name}-{host}-1", f"{alias}-{host}-1"

        async def until(pred) -> None:  # type: ignore[no-untyped-def]
            for _ in range(200):
                if pred(c.agent.services()):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"condition never met: {sorted(c.agent.services())}")

        await until(lambda s: main_id in s and alias_id in s)
        c.agent.service.deregister(main_id)  # someone removes us: put back by the next round
        await until(lambda s: main_id in s)
        wanted.clear()  # the register= option left the table
        await until(lambda s: alias_id not in s and main_id in s)
        task.cancel()
        await reg.deregister_all()
        await until(lambda s: main_id not in s)
        await api.close()

    asyncio.run(scenario())
