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

import threading
import time
from collections.abc import Iterator

import pytest

from tests.consul_agent import ConsulAgent
from tests.consul_helpers import wait_until
from tests.container.engine import CACHE, Registrator, docker, record
from tests.container_faults.harness import (
    LABEL,
    NET,
    Load,
    counters,
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
    r.stop()
    (CACHE / "faults-router.log").write_text(r.output())
    print(f"--- router log (last lines; all of it in {CACHE}/faults-router.log):\n{r.output()[-3000:]}")


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
    # checks every 3 s: a stays in the table for a few seconds after its address stops answering, so the
    # router surely has failures to remember (with 1 s it could leave before the first one was counted)
    a_id, a_ip = run_demo(f"{svc}-a", svc, interval="3s")
    run_demo(f"{svc}-b", svc, interval="3s")
    wait_until(lambda: len(passing(consul.http_url, svc)) == 2, timeout=30, message="a and b passing")
    load = Load(f"{router.url}/{svc}/", metrics=lambda: counters(router.ui)).start()
    try:
        answering(load, 2)
        # a's address stops answering while it is still registered (a dead host behind a live address):
        # the router's connects to it fail, and it is ejected, until its check fails and it leaves the table.
        a_sid = f"{reg.hostname}:{svc}-a:8080"
        seen: list[dict] = []  # a's proxy state with failures, as /api/services showed it before a left
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                p = instances(router.ui, svc).get(a_sid, {}).get("proxy") or {}
                if p.get("failures", 0) > 0:
                    seen.append(p)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        load.mark("a unreachable")
        docker("network", "disconnect", "-f", NET, f"{svc}-a")
        wait_until(lambda: a_sid not in passing(consul.http_url, svc), timeout=15, message="a's check failing")
        wait_until(lambda: not instances(router.ui, svc).get(a_sid, {}).get("proxy"), timeout=10,
                   message="a out of the router's table (its proxy state gone)")
        watching.set()
        watcher.join(10)
        # the precondition: the router had failures of a to remember (else this test would prove nothing)
        assert seen, "the router counted no failure of a before a left the table"
        a_state = seen[-1]
        docker("rm", "-f", f"{svc}-a")
        wait_until(lambda: a_sid not in instances(router.ui, svc), timeout=10, message="a out of the table")
        # the new container: Docker gives it a's address
        load.mark("c starting")
        c_name = f"{svc}-a" if same_name else f"{svc}-c"
        c_id, c_ip = run_demo(c_name, svc, interval="3s")
        assert c_ip == a_ip, f"Docker gave the new container {c_ip}, not the freed {a_ip}"
        c_sid = f"{reg.hostname}:{c_name}:8080"
        wait_until(lambda: c_sid in passing(consul.http_url, svc), timeout=15, message="c passing")
        t_passing = time.monotonic()
        load.mark("c passing")
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
        "requests while c started": load.summary("c starting"), "phase starts (UTC)": load.marks,
    }})
    print(dump(load.summary("a unreachable")))



def phases(load: Load, names: list[str], ok: frozenset[str] = frozenset({"200"})) -> dict[str, dict]:
    return {p: load.summary(p, ok) for p in names}


@pytest.mark.parametrize("address", ["internal", "published"])
def test_stop_kill_rolling(consul: ConsulAgent, router: RouterProc, registrator: list[Registrator],
                           address: str) -> None:
    """4 containers with Registrator's HTTP check (every 1 s) and the demo's drain (3 s of serving after
    SIGTERM, /health 503 meanwhile): docker stop one, docker kill one, bring it back to 4, then replace
    3 of the 4 one at a time as a deploy script does (docker run the new one, wait until its check passes,
    docker stop the old one). published: Registrator without -internal, through docker-proxy."""
    svc = f"roll-{address}"
    follow(registrator, consul, address)
    pub = address == "published"

    def start(n: int) -> str:
        return run_demo(f"{svc}-{n}", svc, publish=pub)[0]

    def wait_passing(names: set[str]) -> None:
        wait_until(lambda: {sid.split(":")[1] for sid in passing(consul.http_url, svc)} == names,
                   timeout=30, interval=0.1, message=f"passing in Consul: exactly {sorted(names)}")

    for n in range(1, 5):
        start(n)
    wait_passing({f"{svc}-{n}" for n in range(1, 5)})
    load = Load(f"{router.url}/{svc}/", metrics=lambda: counters(router.ui)).start()
    steps: list[str] = []
    try:
        answering(load, 4)
        load.mark("docker stop")
        t = time.monotonic()
        docker("stop", f"{svc}-1")
        steps.append(f"docker stop {svc}-1: {time.monotonic() - t:.1f} s")
        time.sleep(1)
        load.mark("docker kill")
        docker("kill", f"{svc}-2")
        time.sleep(3)
        load.mark("back to 4")
        start(5)
        start(6)
        wait_passing({f"{svc}-{n}" for n in (3, 4, 5, 6)})
        answering(load, 4)
        load.mark("rolling replacement of 3 of 4")
        live = {f"{svc}-{n}" for n in (3, 4, 5, 6)}
        for old, new in ((3, 7), (4, 8), (5, 9)):
            t = time.monotonic()
            start(new)
            live.add(f"{svc}-{new}")
            wait_passing(live)
            docker("stop", f"{svc}-{old}")
            live.discard(f"{svc}-{old}")
            steps.append(f"replace {svc}-{old} by {svc}-{new}: {time.monotonic() - t:.1f} s")
        wait_passing(live)
        time.sleep(1)
    finally:
        load.stop()
    names = ["docker stop", "docker kill", "back to 4", "rolling replacement of 3 of 4"]
    figures = phases(load, names)
    record("faults.json", **{f"stop/kill/rolling ({address})": {**figures, "steps": steps, "phase starts (UTC)": load.marks}})
    assert all(f["requests"] > 20 for f in figures.values()), dump(figures)
    assert [f["failed"] for f in figures.values()] == [0] * len(names), dump(figures)


def test_userland_proxy(consul: ConsulAgent, router: RouterProc, registrator: list[Registrator]) -> None:
    """Registrator without -internal registers the published port: docker-proxy, which accepts every
    connection and closes it at once when nothing answers behind it (a container that is gone, or, here,
    one whose program listens on another port than the one published: deterministic). Its TCP check
    (SERVICE_CHECK_TCP) connects to docker-proxy and passes, so it stays in the table. Closed before the
    request was written: a connect failure, retried elsewhere for every method; closed after (docker-proxy
    read it, then found nothing behind): GET and HEAD are retried, a POST may fail with an honest 502 (it
    could have been delivered). With only that instance left: 502 for all; never a 500."""
    svc = "px"
    follow(registrator, consul, "published")
    good = run_demo(f"{svc}-good", svc, publish=True, check="tcp")[0]
    run_demo(f"{svc}-dead", svc, publish=True, check="tcp", listen_port=8081)
    wait_until(lambda: len(passing(consul.http_url, svc)) == 2, timeout=30, message="both passing")
    load = Load(f"{router.url}/{svc}/", methods=("GET", "POST", "GET", "HEAD"),
                metrics=lambda: counters(router.ui)).start()
    try:
        wait_until(lambda: any(s.instance == good for s in load.samples[-200:]), timeout=20,
                   message="the good one answering")
        load.mark("one of 2 behind a docker-proxy with nothing behind it")
        time.sleep(4)
        dead_sid = next(sid for sid in passing(consul.http_url, svc) if ":px-dead:" in sid)
        dead = instances(router.ui, svc)[dead_sid]["proxy"]
        load.mark("the good one removed")
        docker("rm", "-f", f"{svc}-good")
        wait_until(lambda: list(passing(consul.http_url, svc)) == [dead_sid], timeout=10,
                   message="only the dead one registered")
        load.mark("only that one left")
        time.sleep(3)
    finally:
        load.stop()
    names = ["one of 2 behind a docker-proxy with nothing behind it", "the good one removed", "only that one left"]
    figures = phases(load, names)
    record("faults.json", **{"docker-proxy with nothing behind it": {
        **figures, "its proxy state in the router": {k: dead[k] for k in ("failures", "ejections", "reason")},
        "phase starts (UTC)": load.marks}})
    every = [s for s in load.samples if s.phase in names]
    assert not [s for s in every if s.outcome == "500"], dump(figures)
    assert dead["failures"] > 0, f"the router never tried the dead one: {dead}"
    first = load.of(names[0])
    assert len(first) > 50 and not [s for s in first if s.method != "POST" and s.outcome != "200"], dump(figures)
    assert {s.outcome for s in first if s.method == "POST"} <= {"200", "502"}, dump(figures)
    assert {s.instance for s in first if s.method == "POST" and s.outcome == "200"} == {good}
    last = load.of(names[2])
    assert last and {s.outcome for s in last} == {"502"}, dump(figures[names[2]])
