"""Passive ejection: an instance that refuses connections stops getting attempts, then is tried again."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from router.proxy.balance import Balancer
from router.proxy.ejection import EjectPolicy
from tests.backends import Backend
from tests.consul_helpers import wait_until
from tests.router_proc import RouterProc, free_port


class _T:
    def __init__(self, port: int) -> None:
        self.source, self.scheme, self.host, self.port, self.service, self.weight = "s", "http", "h", port, "svc", 1.0
        self.tls_skip_verify = False  # a Target's field the picker reads for its pool keys


class _Route:
    def __init__(self, *targets: _T) -> None:
        self.host, self.path, self.targets, self.lb = "", "/", targets, None

    def ring(self) -> tuple:
        return ()


def test_ejection_unit() -> None:
    """Consecutive failures eject; the time is up: tried again, one more failure ejects it for twice as
    long; one success clears it. A route of two never has both skipped."""
    lb = Balancer("rr", policy=EjectPolicy(failures=2, duration=5.0, max_duration=60.0))
    route = _Route(_T(1), _T(2))
    p = lb.picker(route)
    dead, live = p.states
    lb.try_failed(dead, 0.0, 0.0, "refused")
    assert dead.until == 0.0
    lb.try_failed(dead, 0.0, 0.0, "refused")
    assert dead.until == 5.0 and lb.ejections == 1
    assert {p.pick(1.0) for _ in range(10)} == {1}  # only the live one
    lb.try_failed(live, 0.0, 1.0, "refused")
    lb.try_failed(live, 0.0, 1.0, "refused")
    assert live.until == 6.0 and lb.ejections == 2
    assert {p.pick(2.0) for _ in range(10)} == {0}  # both ejected, one skipped at most: the one ejected last
    assert {p.pick(7.0) for _ in range(10)} == {0, 1}  # both readmitted
    assert dead.until == 0.0 and dead.fails == 1
    lb.try_failed(dead, 0.0, 7.0, "refused")  # one more failure: ejected again, twice as long
    assert dead.until == 17.0 and lb.ejections == 3
    lb.try_succeeded(dead, 0.001, 8.0)  # one success clears the streak
    assert dead.fails == 0 and dead.streak == 0
    assert lb.connect_failures == 0  # only connect failures count there


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend("live").start()
    yield b
    b.stop()


def _metric(r: RouterProc, name: str) -> float:
    text = httpx.get(r.ui + "/metrics").text
    m = re.search(rf"^consul_router_{name} (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


def test_refusing_instance_is_ejected_and_comes_back(backend: Backend) -> None:
    """2 refused connects eject it for 4 s; when that ran out it is tried again (half-open), fails and is
    ejected for twice as long. Every request is answered by the live one. Counted, not timed: each ejection
    after the first is one failed probe, so failures = ejections + 1 however slowly the requests go."""
    dead = free_port()
    routes = f"route add svc /ej http://127.0.0.1:{dead}/\nroute add svc /ej http://127.0.0.1:{backend.port}/"
    gauge = f'consul_router_upstream_ejected{{target="127.0.0.1:{dead}"}} 1.0'
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.strategy", "rr",
                    "-proxy.eject.failures", "2", "-proxy.eject.duration", "4s", "-proxy.eject.maxduration", "8s") as r:
        with httpx.Client() as c:
            sent = 0
            while _metric(r, "upstream_ejections_total") < 1:  # rr: the dead one gets every other request
                assert c.get(r.url + "/ej").status_code == 200
                sent += 1
                assert sent < 20, r.output()
            for _ in range(6):  # ejected: the live one answers them (or a probe fails, counted below)
                assert c.get(r.url + "/ej").status_code == 200
        failures, ejections = _metric(r, "upstream_connect_failures_total"), _metric(r, "upstream_ejections_total")
        assert failures == ejections + 1 and _metric(r, "upstream_retries_total") == failures
        assert "ejected for 4.0s" in r.output()

        wait_until(lambda: gauge not in httpx.get(r.ui + "/metrics").text, timeout=60,
                   message="the ejection to run out")  # past proxy.eject.duration: tried again
        with httpx.Client() as c:
            sent = 0
            while _metric(r, "upstream_ejections_total") == ejections:  # the probe fails: ejected again
                assert c.get(r.url + "/ej").status_code == 200
                sent += 1
                assert sent < 20, r.output()
        failures, ejections = _metric(r, "upstream_connect_failures_total"), _metric(r, "upstream_ejections_total")
        assert ejections >= 2 and failures == ejections + 1 and _metric(r, "upstream_retries_total") == failures
        assert "ejected for 8.0s" in r.output()  # the second ejection in a row lasts twice as long


def test_ejected_gauge_sums_the_workers(backend: Backend) -> None:
    """With two worker processes each ejects on its own; /metrics shows how many eject the instance."""
    dead = free_port()
    routes = f"route add svc /ej http://127.0.0.1:{dead}/\nroute add svc /ej http://127.0.0.1:{backend.port}/"
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.strategy", "rr",
                    "-proxy.workers", "2", "-proxy.eject.failures", "1", "-proxy.eject.duration", "60s") as r:
        gauge = f'consul_router_upstream_ejected{{target="127.0.0.1:{dead}"}} '
        deadline = time.monotonic() + 15
        value = 0.0
        while time.monotonic() < deadline and value < 2:
            with httpx.Client() as c:  # a new connection each round: the kernel spreads them over the workers
                assert c.get(r.url + "/ej").status_code == 200
            text = httpx.get(r.ui + "/metrics").text
            line = next((ln for ln in text.splitlines() if ln.startswith(gauge)), "")
            value = float(line.rsplit(" ", 1)[1]) if line else 0.0
        assert value == 2.0, text  # both workers met the dead instance and eject it
        assert _metric(r, "upstream_ejections_total") == 2


def _dead_routes(n: int, live: Backend | None = None) -> tuple[str, list[int]]:
    """A route /rt on `n` free ports (nothing listens: every connect is refused), then `live` if given."""
    ports = [free_port() for _ in range(n)]
    lines = [f"route add svc /rt http://127.0.0.1:{p}/" for p in ports]
    if live is not None:
        lines.append(f"route add svc /rt http://127.0.0.1:{live.port}/")
    return "\n".join(lines), ports


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_retry_attempts_bound_the_dials_per_request(attempts: int) -> None:
    """proxy.retry.attempts is the number of connects per request in all (1 = no retry): with more dead
    instances than that, one request dials exactly `attempts` of them, then answers 502."""
    routes, _ = _dead_routes(6)
    with RouterProc.static(routes, "-proxy.retry.attempts", str(attempts), "-proxy.eject.failures", "0") as r:
        resp = httpx.get(r.url + "/rt", timeout=10)
        assert (resp.status_code, resp.text) == (502, "upstream unreachable\n")
        assert _metric(r, "upstream_connect_failures_total") == attempts
        assert _metric(r, "upstream_retries_total") == attempts - 1
        assert r.output().count("unreachable") == 1  # one 502, logged once, after the last attempt


def test_retries_never_dial_an_instance_twice() -> None:
    """Fewer instances than proxy.retry.attempts: each is tried once, then 502 (no second lap)."""
    routes, _ = _dead_routes(2)
    with RouterProc.static(routes, "-proxy.retry.attempts", "5", "-proxy.eject.failures", "0") as r:
        assert httpx.get(r.url + "/rt", timeout=10).status_code == 502
        assert _metric(r, "upstream_connect_failures_total") == 2
        assert _metric(r, "upstream_retries_total") == 1


def test_retry_bound_with_a_live_instance_behind_the_dead_ones(backend: Backend) -> None:
    """rr over 4 dead instances and a live one, 3 attempts: the first request meets only dead ones and is
    502 (it stopped at the bound although a live instance existed); the next one gets through."""
    routes, _ = _dead_routes(4, live=backend)
    before = backend.hits
    with RouterProc.static(routes, "-proxy.strategy", "rr", "-proxy.retry.attempts", "3",
                           "-proxy.eject.failures", "0") as r:
        assert httpx.get(r.url + "/rt", timeout=10).status_code == 502  # dead 1, 2, 3
        assert (_metric(r, "upstream_connect_failures_total"), _metric(r, "upstream_retries_total")) == (3, 2)
        assert backend.hits == before
        # The next request starts at dead 4 (the bound is checked before another instance is picked, so
        # the 502 did not use up dead 4's turn) and is retried on the live one.
        resp = httpx.get(r.url + "/rt", timeout=10)
        assert (resp.status_code, resp.text) == (200, "live\n")
        assert _metric(r, "upstream_connect_failures_total") == 4
        assert backend.hits == before + 1
