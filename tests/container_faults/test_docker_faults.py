"""Issue 17's Docker end-to-end checks: real demo containers on a private bridge, registered in Consul from
Docker's events as Registrator registers them, the router (default configuration) from this checkout, and
steady keep-alive load through it (`make container-faults`; see harness.py for the layout).

test_address_reuse: a container that gets a removed container's bridge address (Docker hands it out at
once) gets traffic at once; the old instance's failures are not applied to it.
test_userland_proxy: through docker-proxy, which accepts and then closes when nothing answers behind it:
never a 500; such a connection is a connect failure, retried elsewhere for every method, else 502.
test_stop_kill_rolling: docker stop, docker kill and a rolling replacement of 3 of 4 containers under load
lose no request while another healthy instance exists (Registrator -internal and published ports).
Figures go to CT_CACHE/faults.json, which the script prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.consul_agent import ConsulAgent
from tests.consul_helpers import wait_until
from tests.container.engine import Registrator, docker, record
from tests.container_faults.harness import (
    LABEL,
    NET,
    Load,
    dump,
    instances,
    passing,
    remove_all,
    run_demo,
)
from tests.router_proc import RouterProc


@pytest.fixture(scope="module")
def consul() -> Iterator[ConsulAgent]:
    agent = ConsulAgent().start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def router(consul: ConsulAgent) -> Iterator[RouterProc]:
    """The router with its defaults: only where Consul is, and no self-registration (RouterProc's)."""
    r = RouterProc("-registry.consul.addr", consul.addr).start()
    yield r
    print(f"--- router log (last lines):\n{r.output()[-3000:]}")
    r.stop()


@pytest.fixture
def registrator(consul: ConsulAgent) -> Iterator[list[Registrator]]:
    started: list[Registrator] = []
    yield started
    remove_all()  # before the stand-ins stop, so that they deregister what they registered, as Registrator does
    for reg in started:
        wait_until(lambda r=reg: not r.registered, timeout=20, message="the test's containers deregistered")
        reg.stop()
    for reg in started:
        assert reg.errors == [], reg.errors


def follow(started: list[Registrator], consul: ConsulAgent, address: str) -> Registrator:
    reg = Registrator(label=LABEL, address=address, consul=consul.http_url)
    reg.start()
    started.append(reg)
    return reg


def answering(load: Load, n: int, window: float = 2) -> set[str]:
    """The instances that answered in the last `window` seconds, once `n` do."""
    def seen() -> set[str] | None:
        since = time.monotonic() - window
        got = {s.instance for s in load.samples[-4000:] if s.sent >= since and s.instance}
        return got if len(got) == n else None
    return wait_until(seen, timeout=60, interval=0.2, message=f"{n} instances answering")


@pytest.mark.parametrize("same_name", [False, True], ids=["new-name", "same-name"])
def test_address_reuse(consul: ConsulAgent, router: RouterProc, registrator: list[Registrator],
                       same_name: bool) -> None:
    svc = f"reuse{int(same_name)}"
    reg = follow(registrator, consul, "internal")
    a_id, a_ip = run_demo(f"{svc}-a", svc)
    run_demo(f"{svc}-b", svc)
    wait_until(lambda: len(passing(consul.http_url, svc)) == 2, timeout=30, message="a and b passing")
    load = Load(f"{router.url}/{svc}/").start()
    try:
        answering(load, 2)
        # a's address stops answering while it is still registered (a dead host behind a live address):
        # the router's connects to it fail, and it is ejected, until its check fails and it leaves the table.
        load.phase = "a unreachable"
        docker("network", "disconnect", "-f", NET, f"{svc}-a")
        a_sid = f"{reg.hostname}:{svc}-a:8080"
        a_state = wait_until(lambda: (p := instances(router.ui, svc).get(a_sid, {}).get("proxy", {}))
                             and p.get("failures", 0) > 0 and p, timeout=10, interval=0.05,
                             message="the router counting a's connect failures")
        wait_until(lambda: a_sid not in passing(consul.http_url, svc), timeout=15, message="a's check failing")
        docker("rm", "-f", f"{svc}-a")
        wait_until(lambda: a_sid not in instances(router.ui, svc), timeout=10, message="a out of the table")
        # the new container: Docker gives it a's address
        load.phase = "c starting"
        c_name = f"{svc}-a" if same_name else f"{svc}-c"
        c_id, c_ip = run_demo(c_name, svc)
        assert c_ip == a_ip, f"Docker gave the new container {c_ip}, not the freed {a_ip}"
        c_sid = f"{reg.hostname}:{c_name}:8080"
        wait_until(lambda: c_sid in passing(consul.http_url, svc), timeout=15, message="c passing")
        t_passing = time.monotonic()
        load.phase = "c passing"
        first = wait_until(lambda: next((s for s in load.samples[-2000:] if s.instance == c_id), None),
                           timeout=10, interval=0.02, message="c's first answer")
        time.sleep(2)
        c_state = instances(router.ui, svc)[c_sid]["proxy"]
        share = load.summary("c passing")
        served_by_c = sum(s.instance == c_id for s in load.of("c passing"))
    finally:
        load.stop()
    assert c_state["failures"] == 0 and c_state["ejections"] == 0 and c_state["state"] == "healthy", \
        f"the new instance's state: {c_state}; the old one's: {a_state}"
    assert served_by_c > 0.2 * share["requests"], f"c served {served_by_c} of {share['requests']}"
    assert share["failed"] == 0, share
    wait = round(max(0.0, first.sent + first.took - t_passing), 2)
    record("faults.json", **{f"address reuse ({'same' if same_name else 'new'} container name)": {
        "freed address": a_ip, "old instance's proxy state before it left": {
            k: a_state[k] for k in ("failures", "ejections", "state", "reason")},
        "new instance: s from passing in Consul to its first answer": wait,
        "new instance's share in the 2 s after": f"{served_by_c} of {share['requests']}",
        "new instance's proxy state": {k: c_state[k] for k in ("failures", "ejections", "state")},
        "requests while a was unreachable": load.summary("a unreachable"),
        "requests while c started": load.summary("c starting"),
    }})
    print(dump(load.summary("a unreachable")))

