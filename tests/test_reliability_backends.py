"""Issue 7, "Backends misbehaving": instances replaced, killed, black-holed or stalled under load.

Routes come from a real Consul agent; instances are real processes (tests/backend_proc.py) where the
failure is a process's death. Assertions are counts: client-visible errors, connect failures, retries and
ejections read from the router's /metrics.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.backend_proc import BackendProc, Blackhole, Load, Staller
from tests.backends import Backend
from tests.consul_helpers import deregister, make_client, register, uid, wait_until
from tests.router_proc import RouterProc
from tests.test_churn import table_rows

pytestmark = pytest.mark.consul


def start_router(agent, *flags: str) -> RouterProc:  # type: ignore[no-untyped-def]
    return RouterProc.consul(agent.addr, *flags).start()


def metric(router: RouterProc, name: str) -> dict[str, float]:
    """Samples of consul_router_<name> from /metrics: {labels text: value}."""
    text = httpx.get(router.ui + "/metrics", timeout=5).text
    out = {}
    for m in re.finditer(rf"^consul_router_{name}(?:_total)?(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def total(router: RouterProc, name: str) -> float:
    return sum(metric(router, name).values())


def dsts(router: RouterProc, svc: str) -> set[str]:
    return {d for _, _, d in table_rows(router, svc)}


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def procs() -> Iterator[list[BackendProc]]:
    started: list[BackendProc] = []
    yield started
    for p in started:
        p.stop()


def test_rolling_update_under_300_rps(consul_agent, procs) -> None:
    """For each of 3 instances: start a new one, register it, deregister and stop the old one. Zero errors."""
    c = make_client(consul_agent.port)
    svc = f"roll-{uid()}"
    olds = [BackendProc(f"old{i}").start() for i in range(3)]
    procs.extend(olds)
    for p in olds:
        register(c, svc, f"{svc}-{p.name}", p.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(consul_agent)
    try:
        wait_until(lambda: len(dsts(router, svc)) == 3, message="3 instances")
        load = Load(router.url + f"/{svc}", rate=300, threads=16).start()
        time.sleep(1)
        for i, old in enumerate(olds):
            new = BackendProc(f"new{i}").start()
            procs.append(new)
            register(c, svc, f"{svc}-{new.name}", new.port, tags=[f"urlprefix-/{svc}"])
            wait_until(lambda: url(new.port) in dsts(router, svc), message=f"{new.name} routed")  # noqa: B023
            deregister(c, f"{svc}-{old.name}")
            wait_until(lambda: url(old.port) not in dsts(router, svc), message=f"{old.name} gone")  # noqa: B023
            time.sleep(0.5)  # requests already forwarded to it finish; then stop it as a deploy would
            old.stop()
        time.sleep(1)
        load.stop()
        print(f"rolling update: {load.total} requests at {load.achieved:.0f}/s, {load.failed} failed, answers {dict(load.bodies)}")
        assert load.failed == 0, load.outcomes
        assert load.total > 300 * 3
        assert {f"new{i}" for i in range(3)} <= set(load.bodies)
    finally:
        router.stop()


def test_killed_instance_is_retried_and_ejected(consul_agent, procs) -> None:
    """kill -9 without deregistering: idempotent GETs see no 5xx (retried elsewhere) and it is ejected.

    Conditions, not sleeps: the kill comes once the load has reached all three instances, and the load
    stops once the instance is ejected and 200 more requests have been answered after that."""
    c = make_client(consul_agent.port)
    svc = f"kill9-{uid()}"
    ps = [BackendProc(f"k{i}").spawn() for i in range(3)]
    procs.extend(ps)
    for p in ps:
        p.wait()
        register(c, svc, f"{svc}-{p.name}", p.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(consul_agent, "-proxy.eject.failures", "3", "-proxy.eject.duration", "60s")
    try:
        wait_until(lambda: len(dsts(router, svc)) == 3, timeout=60, message="3 instances")
        load = Load(router.url + f"/{svc}", rate=200, threads=8).start()
        try:
            wait_until(lambda: all(load.bodies[p.name] > 0 for p in ps), timeout=60, message="load on all three")
            ps[0].kill()
            wait_until(lambda: total(router, "upstream_ejections") >= 1, timeout=60, message="the ejection")
            after = load.total
            wait_until(lambda: load.total >= after + 200, timeout=60, message="200 answers after the ejection")
        finally:
            load.stop()
        assert url(ps[0].port) in dsts(router, svc)  # still registered and passing in Consul: only ejection helps
        ejected = metric(router, "upstream_ejected")
        print(f"kill -9: {load.total} requests, outcomes {dict(load.outcomes)}; connect failures "
              f"{total(router, 'upstream_connect_failures')}, retries {total(router, 'upstream_retries')}, "
              f"ejections {total(router, 'upstream_ejections')}, ejected {ejected}")
        assert load.failed == 0, load.outcomes
        assert load.bodies["k0"] > 0 and load.bodies["k1"] > 0 and load.bodies["k2"] > 0
        # three failures in a row eject it: kept-alive connections closing count as well as refused connects
        assert total(router, "upstream_connect_failures") >= 1
        assert total(router, "upstream_retries") >= 3
        assert total(router, "upstream_ejections") == 1
        assert ejected == {f'{{target="127.0.0.1:{ps[0].port}"}}': 1.0}
    finally:
        router.stop()
        for p in ps:
            deregister(c, f"{svc}-{p.name}")


def test_blackholed_instance_costs_one_dial_timeout(consul_agent) -> None:
    """A listener with a full backlog: only the first request waits for the dial timeout, later ones go elsewhere."""
    hole = Blackhole()
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(OSError):  # the premise: connects to it really hang
        probe.connect(("127.0.0.1", hole.port))
    probe.close()
    good = Backend("good").start()
    c = make_client(consul_agent.port)
    svc = f"hole-{uid()}"
    register(c, svc, f"{svc}-hole", hole.port, tags=[f"urlprefix-/{svc}"])
    register(c, svc, f"{svc}-good", good.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(consul_agent, "-proxy.dialtimeout", "1s", "-proxy.eject.failures", "1",
                          "-proxy.eject.duration", "60s")
    try:
        wait_until(lambda: len(dsts(router, svc)) == 2, message="2 instances")
        with httpx.Client(timeout=10, trust_env=False) as client:
            answers = [client.get(router.url + f"/{svc}") for _ in range(20)]
        assert [r.status_code for r in answers] == [200] * 20
        assert {r.text.strip() for r in answers} == {"good"}
        assert total(router, "upstream_connect_failures") <= 1  # at most one request met the dial timeout
        assert total(router, "upstream_ejections") == total(router, "upstream_connect_failures")
    finally:
        router.stop()
        good.stop()
        hole.close()
        deregister(c, f"{svc}-hole")
        deregister(c, f"{svc}-good")


def test_stalled_instance_gets_504_others_unaffected(consul_agent) -> None:
    """An instance that accepts and never answers: 504 after the response-header timeout; other routes fine."""
    stall, good = Staller(), Backend("good").start()
    c = make_client(consul_agent.port)
    svc_s, svc_g = f"stall-{uid()}", f"fine-{uid()}"
    register(c, svc_s, f"{svc_s}-1", stall.port, tags=[f"urlprefix-/{svc_s}"])
    register(c, svc_g, f"{svc_g}-1", good.port, tags=[f"urlprefix-/{svc_g}"])
    router = start_router(consul_agent, "-proxy.responseheadertimeout", "1s")
    try:
        wait_until(lambda: dsts(router, svc_s) and dsts(router, svc_g), message="both routed")
        load = Load(router.url + f"/{svc_g}", rate=100, threads=4).start()
        stalled = Load(router.url + f"/{svc_s}", rate=10, threads=5, timeout=30).start()
        time.sleep(4)
        stalled.stop()
        load.stop()
        print(f"stall: stalled route {dict(stalled.outcomes)}; other route {dict(load.outcomes)}")
        assert stalled.total > 0 and set(stalled.outcomes) == {"504"}, stalled.outcomes
        assert stall.accepted > 0
        assert load.total > 0 and load.failed == 0, load.outcomes
    finally:
        router.stop()
        stall.close()
        good.stop()
        deregister(c, f"{svc_s}-1")
        deregister(c, f"{svc_g}-1")


def test_route_timeout_overrides_the_global_header_timeout_for_that_route_only(consul_agent) -> None:
    """One slow instance behind two routes: `timeout=1s` on one of them answers 504 while the global
    proxy.responseheadertimeout is 30s; the other route, without the option, waits for the answer (~2 s)."""
    slow = Backend("slowpoke").start()
    c = make_client(consul_agent.port)
    svc = f"rto-{uid()}"
    register(c, svc, f"{svc}-1", slow.port, tags=[f"urlprefix-/{svc}-short timeout=1s", f"urlprefix-/{svc}-long"])
    router = start_router(consul_agent, "-proxy.responseheadertimeout", "30s")
    try:
        wait_until(lambda: len(table_rows(router, svc)) == 2, message="both routes")
        with httpx.Client(timeout=60, trust_env=False) as client:
            t0 = time.monotonic()
            short = client.get(router.url + f"/{svc}-short/slow?s=2")
            waited = time.monotonic() - t0
            long = client.get(router.url + f"/{svc}-long/slow?s=2")
        assert short.status_code == 504, short.text
        assert waited < 30  # the route's timeout fired, not the global one
        assert (long.status_code, long.text) == (200, "slowpoke\n")  # the global 30s applies here
        # both reached the one instance: the 504 is the router's timeout, not a missing upstream
        assert [q.path for q in slow.requests] == [f"/{svc}-short/slow?s=2", f"/{svc}-long/slow?s=2"]
        assert total(router, "upstream_connect_failures") == 0
    finally:
        router.stop()
        slow.stop()
        deregister(c, f"{svc}-1")
