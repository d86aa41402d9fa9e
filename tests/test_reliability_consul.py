"""Issue 7, "Consul misbehaving": a real agent, killed, hung, erroring, rewinding or restarted under load.

Faults that a process signal cannot produce (hang, HTTP 500/429, rewritten indexes) come from
tests/consul_faults.py, a relay in front of the real agent. Bounds are functional: zero failed requests,
routes kept, and requests/s to Consul derived from the router's own settings (maxrate, backoff).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from registry.consul.api import Backoff, ConsulAPI
from router.config.settings import ConfigError, load
from tests.backend_proc import Load
from tests.backends import Backend
from tests.consul_agent import ConsulAgent
from tests.consul_faults import ConsulRelay
from tests.consul_helpers import deregister, make_client, register, uid, wait_until
from tests.router_proc import RouterProc
from tests.test_churn import table_rows

pytestmark = pytest.mark.consul

WAIT = 2.0  # registry.consul.wait in these tests: short, so a hang is noticed within seconds
MAXRATE = 5.0


def start_router(addr: str, *flags: str) -> RouterProc:
    return RouterProc.consul(addr, "-registry.consul.wait", f"{WAIT:g}s", "-registry.consul.maxrate", f"{MAXRATE:g}",
                             *flags).start()


@pytest.fixture
def relay(consul_agent: ConsulAgent) -> Iterator[ConsulRelay]:
    r = ConsulRelay(consul_agent.http_url).start()
    yield r
    r.stop()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("stable").start()
    yield b
    b.stop()


def routed(router: RouterProc, path: str) -> bool:
    try:
        return httpx.get(router.url + path, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def status(router: RouterProc) -> dict:
    return httpx.get(router.ui + "/api/status", timeout=5).json()["registry"]


def attempts_bound(seconds: float, loops: int = 1) -> int:
    """Most requests `loops` retrying readers can make in `seconds` under Backoff (shortest jitter: 0.8x).

    Every reader backs off on its own: each watch, the instance dump's retry, and the fetch loop's retry of
    each pending service (the service registered while Consul errs, and any of other tests' services on
    the shared agent that were pending when the errors began).
    """
    b, t, n = Backoff(), 0.0, 1
    while True:
        b.current = b.first if b.current == 0 else min(b.cap, b.current * 2)
        t += b.current * 0.8
        if t > seconds:
            return loops * n
        n += 1


def test_maxsyncage_must_exceed_an_idle_blocking_wait() -> None:
    """A limit an idle blocking query can reach (wait*17/16) would flap /health: rejected."""
    assert load(["-ui.health.maxsyncage", "70s"], env={})["ui.health.maxsyncage"] == 70
    with pytest.raises(ConfigError, match="must exceed"):
        load(["-ui.health.maxsyncage", "60s"], env={})
    with pytest.raises(ConfigError, match="must exceed"):
        load(["-ui.health.maxsyncage", "2s", "-registry.consul.wait", "2s"], env={})


def test_consul_hung_is_noticed_and_health_reports_stale_sync(relay, consul_agent, backend) -> None:
    """Hung Consul: the watch read times out after wait*17/16 + margin, /health (opt-in) says 503, recovery."""
    c = make_client(consul_agent.port)
    svc = f"hung-{uid()}"
    register(c, svc, f"{svc}-1", backend.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(relay.addr, "-ui.health.maxsyncage", f"{WAIT * 17 / 16 + 1:g}s")
    try:
        wait_until(lambda: routed(router, f"/{svc}"), message="route")
        assert httpx.get(router.ui + "/health", timeout=5).status_code == 200
        errors_before = status(router)["error_count"]
        relay.mode = "hang"
        t0 = time.monotonic()
        limit = WAIT + ConsulAPI.read_timeout(WAIT) + 3  # the answer in flight, then one full read timeout
        wait_until(lambda: status(router)["error_count"] > errors_before, timeout=limit, message="watch timeout")
        noticed = time.monotonic() - t0
        errs = [e["error"] for e in status(router)["recent_errors"]]
        assert any("Timeout" in e for e in errs), errs
        assert httpx.get(router.ui + "/health", timeout=5).status_code == 503
        # the relay really holds requests (a hang, not a refusal); right after a timeout every watch may be
        # in its backoff pause, so wait for the next held request
        wait_until(lambda: relay.hung > 0, timeout=10, message="a request held by the hung relay")
        assert routed(router, f"/{svc}")  # last good table still served
        # Back to normal: the watcher reconnects on its own and follows a change made meanwhile.
        svc2 = f"hung2-{uid()}"
        register(c, svc2, f"{svc2}-1", backend.port, tags=[f"urlprefix-/{svc2}"])
        relay.mode = "pass"
        wait_until(lambda: routed(router, f"/{svc2}"), timeout=15, message="change after recovery")
        wait_until(lambda: httpx.get(router.ui + "/health", timeout=5).status_code == 200, timeout=10)
        print(f"hang noticed after {noticed:.1f}s (wait {WAIT}s, read timeout {ConsulAPI.read_timeout(WAIT):.2f}s)")
    finally:
        router.stop()
        deregister(c, f"{svc}-1")


@pytest.mark.parametrize("code", [500, 429])
def test_consul_errors_backoff_and_recovery(relay, consul_agent, backend, code: int) -> None:
    """Consul answering 500/429 for 15 s: capped backoff (bounded req/s), last table served, recovery."""
    consul_errors(relay, consul_agent, backend, code, 15.0)


@pytest.mark.soak
@pytest.mark.parametrize("code", [500, 429])
def test_consul_errors_for_a_minute(relay, consul_agent, backend, code: int) -> None:
    """The issue's full minute of 500/429 (`make soak`)."""
    consul_errors(relay, consul_agent, backend, code, 60.0)


def consul_errors(relay: ConsulRelay, consul_agent: ConsulAgent, backend: Backend, code: int,
                  seconds: float) -> None:
    c = make_client(consul_agent.port)
    svc = f"err-{uid()}"
    register(c, svc, f"{svc}-1", backend.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(relay.addr)
    try:
        wait_until(lambda: routed(router, f"/{svc}"), message="route")
        pid = router.proc.pid  # type: ignore[union-attr]
        load = Load(router.url + f"/{svc}", rate=50, threads=4).start()
        relay.error_status, relay.mode = code, "error"
        t0 = time.monotonic()
        svc2 = f"err2-{uid()}"
        register(c, svc2, f"{svc2}-1", backend.port, tags=[f"urlprefix-/{svc2}"])
        time.sleep(seconds)
        t1 = time.monotonic()
        relay.mode = "pass"
        wait_until(lambda: routed(router, f"/{svc2}"), timeout=10, message="change made during the errors")
        load.stop()
        n = relay.count(t0, t1)
        per_reader = attempts_bound(t1 - t0)
        paths = relay.by_path(t0, t1)
        print(f"HTTP {code} for {t1 - t0:.0f}s: {n} requests to Consul ({n / (t1 - t0):.2f}/s) over {len(paths)} "
              f"paths, at most {max(paths.values())} per path (bound {per_reader}); "
              f"load {load.total} requests, {load.failed} failed")
        print(paths)
        # no fan-out: besides per-service re-reads (other tests' services share this agent), only the watches
        watches = {p for p in paths if not p.startswith("/v1/health/service/")}
        assert len(watches) <= 5, watches
        # capped backoff: no reader (one per path) retries faster than Backoff allows
        assert max(paths.values()) <= per_reader, f"{paths} in {t1 - t0:.0f}s of HTTP {code}: backoff not capped"
        assert n >= 3  # it did keep trying
        assert load.total > 0 and load.failed == 0, load.outcomes
        assert router.proc.poll() is None and router.proc.pid == pid  # type: ignore[union-attr]
    finally:
        router.stop()
        deregister(c, f"{svc}-1")


def test_index_zero_and_backwards_no_busy_loop(relay, consul_agent, backend) -> None:
    """X-Consul-Index rewritten to 0, then to a low constant: reads stay within maxrate, routing follows."""
    c = make_client(consul_agent.port)
    svc = f"idx-{uid()}"
    register(c, svc, f"{svc}-1", backend.port, tags=[f"urlprefix-/{svc}"])
    router = start_router(relay.addr)
    try:
        wait_until(lambda: routed(router, f"/{svc}"), message="route")
        load = Load(router.url + f"/{svc}", rate=50, threads=4).start()
        for override in (0, 3):
            relay.index_override = override
            t0 = time.monotonic()
            new = f"idx{override}-{uid()}"
            register(c, new, f"{new}-1", backend.port, tags=[f"urlprefix-/{new}"])
            wait_until(lambda: routed(router, f"/{new}"), timeout=10, message=f"change under index {override}")  # noqa: B023
            time.sleep(5)
            t1 = time.monotonic()
            paths = relay.by_path(t0, t1)
            print(f"index rewritten to {override}: {relay.rate(t0, t1):.1f} requests/s to Consul; {paths}")
            # Each reader (one path: the state and catalog watches, the KV watch, the hot watches of the
            # services just changed) is paced at `maxrate` (a bucket of 2); instance dumps follow watch answers
            # that went backwards (14 in 5 s here at index 0). A busy loop is hundreds a second on one path.
            per_reader = 1.5 * MAXRATE * (t1 - t0) + 2
            dumps = paths.pop("/v1/internal/ui/nodes", 0)
            assert max(paths.values()) <= per_reader, f"{paths} in {t1 - t0:.1f}s with index {override}: busy loop"
            assert dumps <= 2 * per_reader, f"{dumps} dumps in {t1 - t0:.1f}s with index {override}: busy loop"
            watches = [p for p in paths if not p.startswith("/v1/health/service/")]  # re-reads: other tests' too
            assert len(watches) <= 5, f"readers fanned out with index {override}: {paths}"
        relay.index_override = None
        load.stop()
        assert load.total > 0 and load.failed == 0, load.outcomes
    finally:
        router.stop()
        deregister(c, f"{svc}-1")


@pytest.fixture
def durable_consul(tmp_path) -> Iterator[ConsulAgent]:
    """A non-dev server agent with a data dir: it keeps its catalog across kill and restart."""
    agent = ConsulAgent(data_dir=tmp_path / "data", workdir=tmp_path / "work")
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def local_agent(tmp_path) -> Iterator[tuple[ConsulAgent, ConsulAgent]]:
    """(server, client): a dev server and a client agent with a data dir joined to it, the topology routers
    run in (a local agent on the router's machine, the catalog on the servers)."""
    server = ConsulAgent(workdir=tmp_path / "server").start()
    client = ConsulAgent(data_dir=tmp_path / "data", workdir=tmp_path / "client", join=server).start()
    yield server, client
    client.stop()
    server.stop()


def test_consul_killed_30s_under_load(local_agent, backend) -> None:
    """SIGKILL the router's Consul agent for 30 s under load while the catalog changes on the servers:
    zero failed requests, table kept, the change made meanwhile routed once the agent is back."""
    server, agent = local_agent
    c = make_client(server.port)  # services live on the server's node: the client agent's death is not theirs
    svc = f"kill-{uid()}"
    register(c, svc, f"{svc}-1", backend.port, tags=[f"urlprefix-/{svc}"], ttl="1h")
    router = start_router(agent.addr)
    try:
        wait_until(lambda: routed(router, f"/{svc}"), timeout=15, message="route")
        pid = router.proc.pid  # type: ignore[union-attr]
        before = table_rows(router, svc)
        load = Load(router.url + f"/{svc}", rate=100, threads=6).start()
        agent.kill()
        time.sleep(5)
        svc2 = f"kill2-{uid()}"  # the change made while the router's agent is gone
        register(c, svc2, f"{svc2}-1", backend.port, tags=[f"urlprefix-/{svc2}"], ttl="1h")
        time.sleep(25)
        assert table_rows(router, svc) == before  # the table is kept while Consul is gone
        assert not routed(router, f"/{svc2}")  # nothing reached the router meanwhile
        assert not status(router)["connected"]
        agent.start()
        t0 = time.monotonic()
        # 30 s is a hang guard, not a bound: how fast a change arrives is measured in bench/, not here
        wait_until(lambda: routed(router, f"/{svc2}"), timeout=30, message="change routed after the agent is back")
        print(f"change made during the outage routed {time.monotonic() - t0:.2f}s after the agent was back")
        load.stop()
        # 100/s for ~30 s: a third of that proves requests flowed through the outage even on a loaded machine
        assert load.total > 1000 and load.failed == 0, (load.total, load.outcomes)
        assert router.proc.pid == pid and router.proc.poll() is None  # type: ignore[union-attr]
    finally:
        router.stop()


@pytest.mark.parametrize("check", ["ttl", "http"])
def test_agent_restart_with_data_kept_keeps_routes(durable_consul, backend, check: str) -> None:
    """Restart a server agent with its data dir under load: no instant without the healthy route (fabio #861).

    A TTL check's state survives the restart. An HTTP check (Registrator's SERVICE_CHECK_HTTP) comes back
    critical with no output until its first run, up to an interval later: a check that has not run is
    not evidence, so the instance keeps its route until the check has run (docs/discovery.md)."""
    c = make_client(durable_consul.port)
    svc = f"rst-{uid()}"
    if check == "ttl":
        register(c, svc, f"{svc}-1", backend.port, tags=[f"urlprefix-/{svc}"])
    else:
        c.agent.service.register(svc, service_id=f"{svc}-1", address="127.0.0.1", port=backend.port,
                                 tags=[f"urlprefix-/{svc}"],
                                 check={"HTTP": f"http://127.0.0.1:{backend.port}/health", "Interval": "10s"})
    router = start_router(durable_consul.addr)
    try:
        wait_until(lambda: routed(router, f"/{svc}"), timeout=20, message="route")
        expected = table_rows(router, svc)
        load = Load(router.url + f"/{svc}", rate=100, threads=6).start()
        missing, samples = 0, 0
        for _ in range(2):
            durable_consul.restart()
            end = time.monotonic() + 8  # past the agent's anti-entropy and our watches' first answers
            while time.monotonic() < end:
                samples += 1
                missing += table_rows(router, svc) != expected
                time.sleep(0.05)
        load.stop()
        print(f"restart: {samples} table samples, {missing} without the route; load {load.total}, {load.failed} failed")
        assert missing == 0
        assert load.total > 0 and load.failed == 0, load.outcomes
    finally:
        router.stop()
