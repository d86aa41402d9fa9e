"""Issue 17's first defect, end to end with a real Consul agent: an instance's failure state is its own.

Docker hands a stopped container's address to the next container at once. The connect-failure memory of
the old instance was keyed by address, outlived its route and was applied to the new one (no traffic for
proxy.eject.duration). Here the old instance (nothing listens on its port: refused) is ejected for 60 s,
then replaced by a new instance ID on the same address with a live process: the new one answers at once.
/api/services/<name> shows each instance's proxy state meanwhile.
"""

from __future__ import annotations

import httpx
import pytest

from tests.backend_proc import BackendProc
from tests.consul_helpers import deregister, make_client, register, uid, wait_until
from tests.router_proc import free_port
from tests.test_reliability_backends import start_router, total

pytestmark = pytest.mark.consul


def detail(router, svc: str) -> dict:  # type: ignore[no-untyped-def]
    return httpx.get(f"{router.ui}/api/services/{svc}", timeout=5).json()


def by_id(router, svc: str) -> dict:  # type: ignore[no-untyped-def]
    return {i["id"]: i for i in detail(router, svc)["instances"]}


@pytest.mark.parametrize("new_id", ["new", "old"], ids=["new-id", "same-id"])
def test_a_new_instance_on_a_freed_address_starts_clean(consul_agent, new_id: str) -> None:
    """same-id: Registrator's ID is <host>:<container name>:<port>, so a container recreated under the same
    name (`docker-compose up --force-recreate`, `docker rm -f x; docker run --name x`) on the freed address
    comes back with the old instance's ID and address: once it has left the table it is a new instance."""
    c = make_client(consul_agent.port)
    svc = f"reuse-{uid()}"
    addr_port = free_port()
    other = BackendProc("other").start()
    new = None
    register(c, svc, f"{svc}-old", addr_port, tags=[f"urlprefix-/{svc}"])
    register(c, svc, f"{svc}-other", other.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(consul_agent, "-proxy.eject.failures", "1", "-proxy.eject.duration", "60s",
                          "-proxy.eject.maxduration", "60s")
    try:
        wait_until(lambda: len(detail(router, svc).get("routes", [])) == 2, message="2 instances routed")
        with httpx.Client(timeout=10, trust_env=False) as client:
            wait_until(lambda: client.get(router.url + f"/{svc}").status_code == 200
                       and total(router, "upstream_ejections") >= 1, message="the old instance ejected")
            old = by_id(router, svc)[f"{svc}-old"]["proxy"]
            assert old["state"] == "ejected" and "refused" in old["reason"] and old["ejected_until"]
            assert by_id(router, svc)[f"{svc}-other"]["proxy"]["state"] == "healthy"

            # the old container stops; a new one gets its address (another instance ID, a live process)
            new = BackendProc("new", port=addr_port).start()
            deregister(c, f"{svc}-old")
            if new_id == "old":  # it leaves the table first (Registrator deregisters on the container's death)
                wait_until(lambda: set(by_id(router, svc)) == {f"{svc}-other"}
                           and len(detail(router, svc)["routes"]) == 1, message="the old instance gone")
            register(c, svc, f"{svc}-{new_id}", addr_port, tags=[f"urlprefix-/{svc}"])
            wait_until(lambda: set(by_id(router, svc)) == {f"{svc}-{new_id}", f"{svc}-other"}
                       and len(detail(router, svc)["routes"]) == 2, message="the new instance routed")
            answers = [client.get(router.url + f"/{svc}").text.strip() for _ in range(40)]
        # still inside the old instance's 60 s ejection: had the new one inherited it, it would get nothing
        assert answers.count("new") > 0, answers
        state = by_id(router, svc)[f"{svc}-{new_id}"]["proxy"]
        assert state["state"] == "healthy" and state["failures"] == 0 and state["ejections"] == 0, state
        assert total(router, "upstream_ejections") == 1
    finally:
        router.stop()
        other.stop()
        if new is not None:
            new.stop()
        for i in ("old", "new", "other"):
            try:
                deregister(c, f"{svc}-{i}")
            except AssertionError:
                pass
