"""The image and the compose stack on a real Docker engine (`make container-test`, scripts/container_test.sh).

test_image: the image as built from the Dockerfile, started before Consul: /health 503 until the first table,
200 after; the HEALTHCHECK turns the container healthy; every process runs as uid 10001 under tini; no
compiler; the OCI labels; `docker stop` drains (/health 503, requests in flight finish) and exits 0.
test_compose_stack: deploy/docker-compose.yml itself, with the changes `stack_file` lists (local images for
Consul and the demo, Registrator replaced by tests/container/engine.Registrator, the shared loopback), routes
by tags to two services, and scales the demo 1 -> 3 -> 1 under load with zero failed requests.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router import __version__
from tests.consul_helpers import wait_until
from tests.container.engine import (
    BASE_IMAGE,
    CACHE,
    CONSUL,
    CONSUL_IMAGE,
    DEMO_IMAGE,
    IMAGE,
    NETNS,
    PROXY,
    UI,
    Registrator,
    compose,
    docker,
    inspect,
    logs,
    record,
    status_of,
    wait_consul_leader,
)

ROOT = Path(__file__).resolve().parents[2]
NET = f"container:{NETNS}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def rm(*names: str) -> None:
    docker("rm", "-f", *names, check=False)


def register(sid: str, name: str, port: int, tags: list[str]) -> None:
    r = httpx.put(f"{CONSUL}/v1/agent/service/register", timeout=5, json={
        "ID": sid, "Name": name, "Tags": tags, "Address": "127.0.0.1", "Port": port,
        "Check": {"HTTP": f"http://127.0.0.1:{port}/health", "Interval": "1s"}})
    assert r.status_code == 200, r.text


@pytest.fixture
def containers():
    names: list[str] = []
    yield names
    for n in names:
        if docker("ps", "-aq", "--filter", f"name=^{n}$"):
            print(f"--- last log lines of {n}:\n{logs(n)}")
    rm(*names)


def test_image(containers: list[str]) -> None:
    containers += ["ct-router", "ct-consul", "ct-demo"]
    rm(*containers)
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", IMAGE))
    assert labels["org.opencontainers.image.title"] == "consul-router"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
    base = int(docker("image", "inspect", "-f", "{{.Size}}", BASE_IMAGE))
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", IMAGE, "-c",
                 "for c in gcc cc c++ g++ clang make; do command -v $c; done; ls -d /wheels /src 2>/dev/null;"
                 " /opt/router/bin/python -m pip --version 2>/dev/null; true")
    assert out == "", f"the final stage should have no compiler, wheels, sources or pip: {out}"
    # Every extension module loads after `strip` (the build stage strips them).
    sos = docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/router/bin/python", IMAGE, "-c",
                 "import importlib, pathlib, sys; site = pathlib.Path(sys.prefix, 'lib/python3.11/site-packages');"
                 " mods = sorted('.'.join(p.relative_to(site).with_suffix('').with_suffix('').parts)"
                 " for p in site.rglob('*.so'));"
                 " [importlib.import_module(m) for m in mods]; print(len(mods))")
    assert int(sos) >= 5, sos  # uvloop, httptools (2), orjson, bcrypt, cryptography, cffi, ...
    # The HTTP/2 engine (libnghttp2 through cffi) loads from the copy the image carries, and a session starts.
    h2 = docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/router/bin/python", IMAGE, "-c",
                "from router.proxy import nghttp2 as n; cbs = n.ffi.new('nghttp2_session_callbacks **');"
                " print(n.lib.nghttp2_session_callbacks_new(cbs), n.ffi.string(n.lib.nghttp2_strerror(-508)).decode())")
    assert h2.split(" ", 1) == ["0", "Data transfer deferred"], h2
    # docs/compat.md: no file capability needed for :80 in a network namespace of its own (Docker 20.10+).
    bound = docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/router/bin/python", IMAGE, "-c",
                   "import os, socket; socket.socket().bind(('127.0.0.1', 80)); print(os.getuid())")
    assert bound == "10001", bound
    # Reproducible: every distribution in the image is the version constraints.txt pins.
    installed = dict(line.split("==") for line in docker(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/router/bin/python", IMAGE, "-c",
        "import importlib.metadata as m; print(*sorted(f\"{d.metadata['Name'].lower()}=={d.version}\" "
        "for d in m.distributions()), sep='\\n')").splitlines())
    pins = {canonical(k): v for k, v in (line.strip().split("==") for line in
            (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#"))}
    assert installed.pop("consul-router") == __version__
    unpinned = {k: v for k, v in installed.items() if pins.get(canonical(k)) != v}
    assert installed and not unpinned, f"not as constraints.txt pins: {unpinned}"

    # The router before Consul exists: it must answer, and say it is not ready.
    t0 = time.monotonic()
    docker("run", "-d", "--name", "ct-router", "--network", NET, IMAGE)
    first = wait_until(lambda: status_of(f"{UI}/health"), timeout=30, message="the router's /health to answer")
    assert first == 503, f"/health before any routing table: {first}"
    assert inspect("ct-router", "{{.State.Health.Status}}") == "starting"

    docker("run", "-d", "--name", "ct-consul", "--network", NET, CONSUL_IMAGE,
           "agent", "-dev", "-client=127.0.0.1", "-log-level=warn")
    t_consul = time.monotonic()
    wait_consul_leader()
    wait_until(lambda: status_of(f"{UI}/health") == 200, timeout=30, message="/health 200 once Consul is up")
    ready = time.monotonic()
    wait_until(lambda: inspect("ct-router", "{{.State.Health.Status}}") == "healthy", timeout=60,
               interval=0.2, message="docker inspect: healthy")
    healthy = time.monotonic()

    # Every process of the container runs as 10001, and PID 1 is tini.
    top = docker("top", "ct-router", "-eo", "uid,pid,ppid,comm").splitlines()[1:]
    procs = [line.split() for line in top]
    assert procs and all(p[0] == "10001" for p in procs), top
    pid1 = inspect("ct-router", "{{.State.Pid}}")
    assert Path(f"/proc/{pid1}/comm").read_text().strip() == "tini"
    assert docker("exec", "ct-router", "id", "-u") == "10001"

    # A backend, registered as Registrator would, and requests to it that are still in flight at SIGTERM.
    docker("run", "-d", "--name", "ct-demo", "--network", NET, "-e", "PORT=18080", "-e", "ADDR=127.0.0.1",
           "-e", "SERVICE_NAME=slow", DEMO_IMAGE)
    register(f"{docker('exec', 'ct-demo', 'hostname')}:ct-demo:18080", "slow", 18080, ["urlprefix-/slow"])
    wait_until(lambda: status_of(f"{PROXY}/slow/") == 200, timeout=30, message="the route to the demo")

    results: list[tuple[float, float, int | str]] = []

    def slow_request() -> None:
        sent = time.monotonic()
        try:
            status: int | str = httpx.get(f"{PROXY}/slow/?sleep=4", timeout=30).status_code
        except httpx.HTTPError as e:
            status = repr(e)
        results.append((sent, time.monotonic(), status))

    clients = [threading.Thread(target=slow_request) for _ in range(6)]
    for c in clients:
        c.start()
    time.sleep(1)
    health_during: list[int | None] = []
    served_during: list[tuple[float, int | None]] = []
    t_stop = time.monotonic()
    stopper = threading.Thread(target=docker, args=("stop", "-t", "30", "ct-router"), kwargs={"timeout": 60})
    stopper.start()
    # Until the router has the SIGTERM (docker's CLI takes its time on a loaded machine), then one new
    # request: proxy.shutdownwait (2 s) still serves it.
    while stopper.is_alive() and time.monotonic() - t_stop < 10:
        health_during.append(status_of(f"{UI}/health", timeout=1))
        if health_during[-1] == 503:
            served_during.append((round(time.monotonic() - t_stop, 2), status_of(f"{PROXY}/slow/", timeout=3)))
            break
        time.sleep(0.05)
    stopper.join(60)
    drained = time.monotonic()
    for c in clients:
        c.join(30)
    exit_code = int(inspect("ct-router", "{{.State.ExitCode}}"))
    assert exit_code == 0, f"exit code after docker stop: {exit_code} (137 would be the SIGKILL after -t 30)"
    assert 503 in health_during, f"/health while draining: {health_during}"
    assert [s for _, s in served_during] == [200], f"a request during proxy.shutdownwait: {served_during}"
    assert len(results) == 6 and all(s == 200 for _, _, s in results), results
    assert all(sent < t_stop < done for sent, done, _ in results), "they were in flight at SIGTERM"
    assert drained - t_stop < 30, "within the grace period"
    record(**{
        "image size, MB": round(size / 1e6, 1),
        "local base image size, MB": round(base / 1e6, 1),
        "router layers over the base, MB": round((size - base) / 1e6, 1),
        "router start to /health 200 (Consul started 'consul after', s)": round(ready - t0, 1),
        "consul after, s": round(t_consul - t0, 1),
        "Consul up to /health 200, s": round(ready - t_consul, 1),
        "router start to docker 'healthy', s": round(healthy - t0, 1),
        "docker stop to exit 0 (6 requests in flight, 4 s each, sent 1 s before), s": round(drained - t_stop, 1),
        "/health polls after docker stop until 503": dict(Counter(health_during)),
        "a new request once /health is 503 (s after docker stop, status)": served_during,
    })


# ---- the compose stack ---------------------------------------------------------------------------------

PROJECT = "ctstack"


def stack_file(src: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """deploy/docker-compose.yml as this machine can run it, and the list of what was changed."""
    s = json.loads(json.dumps(src))
    svcs = s["services"]
    changes = []
    del svcs["registrator"]
    changes.append("registrator: removed; the test registers containers from Docker's events as it would")
    for svc in svcs.values():
        svc.pop("ports", None)
        svc.pop("build", None)
        svc["network_mode"] = NET
        deps = [d for d in svc.get("depends_on", []) if d != "registrator"]
        if deps:
            svc["depends_on"] = deps
        else:
            svc.pop("depends_on", None)
    changes.append("every service: network_mode container:<netns> (one shared loopback), no ports, no build")
    svcs["consul"]["image"] = CONSUL_IMAGE
    changes.append(f"consul: image {CONSUL_IMAGE} (the test suite's consul binary on the local base)")
    svcs["router"]["environment"]["FABIO_REGISTRY_CONSUL_ADDR"] = "127.0.0.1:8500"
    changes.append("router: FABIO_REGISTRY_CONSUL_ADDR=127.0.0.1:8500 (no service names on a shared loopback)")
    for svc in svcs.values():
        if str(svc.get("image", "")).startswith("consul-router-demo"):
            svc["environment"].update({"PORT": "0", "ADDR": "127.0.0.1"})
    changes.append("demo services: PORT=0, ADDR=127.0.0.1 (replicas share the loopback: each picks a port)")
    return s, changes


def test_compose_stack() -> None:
    src = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    gen, changes = stack_file(src)
    demos = [n for n, svc in gen["services"].items() if str(svc.get("image", "")).startswith("consul-router-demo")]
    assert len(demos) >= 2, f"two demo services in the compose file: {demos}"
    assert gen["services"]["router"]["image"] == IMAGE and gen["services"]["demo"]["image"] == DEMO_IMAGE
    file = CACHE / "compose.test.yml"  # where scripts/container_test.sh's cleanup finds it
    file.write_text(yaml.safe_dump(gen, sort_keys=False))
    reg = Registrator(PROJECT)
    t0 = time.monotonic()
    try:
        compose(PROJECT, file, "up", "-d", "--no-build")
        wait_consul_leader()
        reg.start()
        wait_until(lambda: status_of(f"{UI}/health") == 200, timeout=60, message="router ready")
        up = time.monotonic()

        # Routing by the tags Registrator would have written.
        def body(path: str, **kw: Any) -> str:
            r = httpx.get(f"{PROXY}{path}", timeout=5, **kw)
            return r.text if r.status_code == 200 else f"HTTP {r.status_code}"

        wait_until(lambda: body("/demo/x").startswith("service=demo "), timeout=30, message="/demo routed")
        assert " path=/demo/x " in body("/demo/x")
        assert body("/", headers={"Host": "demo.localhost"}).startswith("service=demo ")
        api = wait_until(lambda: (b := body("/api/hello")).startswith("service=api ") and b, timeout=30,
                         message="/api routed")
        assert " path=/hello " in api, f"strip=/api: {api}"
        assert body("/nothing-here") == "HTTP 404"
        routes = httpx.get(f"{UI}/api/routes?raw", timeout=5).text
        assert "route add demo /demo " in routes and "route add api /api " in routes, routes

        # Load through the router while the demo scales 1 -> 3 -> 1.
        stop = threading.Event()
        outcomes: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        lock = threading.Lock()

        def load() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    for path, headers in (("/demo/", {}), ("/", {"Host": "demo.localhost"})):
                        try:
                            r = c.get(f"{PROXY}{path}", headers=headers)
                            key = str(r.status_code)
                            inst = r.text.split(" instance=", 1)[-1].split(" ", 1)[0] if r.status_code == 200 else ""
                        except httpx.HTTPError as e:
                            key, inst = type(e).__name__, ""
                        with lock:
                            outcomes[key] += 1
                            if inst:
                                seen[inst] += 1

        def instances_answering(n: int, window: float = 3) -> bool:
            with lock:
                seen.clear()
            time.sleep(window)
            with lock:
                return len(seen) == n

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(2)
        t_up = time.monotonic()
        compose(PROJECT, file, "up", "-d", "--no-build", "--no-recreate", "--scale", "demo=3")
        wait_until(lambda: instances_answering(3), timeout=90, interval=0, message="3 demo instances answering")
        scaled_up = time.monotonic() - t_up
        t_down = time.monotonic()
        compose(PROJECT, file, "up", "-d", "--no-build", "--no-recreate", "--scale", "demo=1")
        gone = time.monotonic() - t_down
        wait_until(lambda: instances_answering(1), timeout=90, interval=0, message="1 demo instance answering")
        scaled_down = time.monotonic() - t_down
        time.sleep(2)
        stop.set()
        for w in workers:
            w.join(30)
        total = sum(outcomes.values())
        failed = total - outcomes["200"]
        assert reg.errors == [], reg.errors
        assert failed == 0, f"failed requests through the router while scaling: {dict(outcomes)}"
        assert total > 100, f"too few requests to mean anything: {total}"
        record(**{
            "compose up to router ready, s": round(up - t0, 1),
            "scale demo 1->3: until 3 instances answer, s": round(scaled_up, 1),
            "scale demo 3->1: docker-compose returned after, s": round(gone, 1),
            "scale demo 3->1: until 1 instance answers, s": round(scaled_down, 1),
            "requests through the router while scaling": total,
            "failed requests while scaling": failed,
            "registrations (stand-in for Registrator)": reg.log,
            "compose changes": changes,
        })
    finally:
        reg.stop()
        compose(PROJECT, file, "down", "-t", "20")
