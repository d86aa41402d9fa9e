"""Helpers of tests/container/: the docker CLI of the engine scripts/container_test.sh started, HTTP inside
the shared loopback namespace, the figures file, and the stand-in for Registrator.

Everything here runs inside the network namespace of the CT_NETNS container (the script runs pytest under
nsenter), the namespace every test container joins: 127.0.0.1 is the containers' loopback, nothing else is
reachable, and the stack keeps its default ports (8500, 9999, 9998) without meeting anything on the machine.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

DOCKER = os.environ.get("CT_DOCKER", "/usr/bin/docker")
COMPOSE = os.environ.get("CT_COMPOSE", "/usr/bin/docker-compose")
NETNS = os.environ.get("CT_NETNS", "")
IMAGE = os.environ.get("CT_IMAGE", "consul-router:local")
BASE_IMAGE = os.environ.get("CT_BASE_IMAGE", "")
CONSUL_IMAGE = os.environ.get("CT_CONSUL_IMAGE", "")
DEMO_IMAGE = os.environ.get("CT_DEMO_IMAGE", "")
CACHE = Path(os.environ.get("CT_CACHE", ".cache/container"))
CONSUL = "http://127.0.0.1:8500"
PROXY = "http://127.0.0.1:9999"
UI = "http://127.0.0.1:9998"


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run the docker CLI against the test's engine; its stdout, stripped."""
    r = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "DOCKER_HOST": os.environ["CT_DOCKER_HOST"]})
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout.strip()


def logs(name: str, tail: int = 30) -> str:
    """A container's output, both streams (the router logs to stderr), with Docker's timestamps."""
    r = subprocess.run([DOCKER, "logs", "-t", "--tail", str(tail), name], capture_output=True, text=True,
                       timeout=30, env={**os.environ, "DOCKER_HOST": os.environ["CT_DOCKER_HOST"]})
    return (r.stdout + r.stderr).strip()


def inspect(name: str, fmt: str) -> str:
    return docker("inspect", "-f", fmt, name)


def compose(project: str, file: Path, *args: str, timeout: float = 300) -> str:
    r = subprocess.run([COMPOSE, "-p", project, "-f", str(file), *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "DOCKER_HOST": os.environ["CT_DOCKER_HOST"]})
    if r.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def status_of(url: str, timeout: float = 2, **kw: Any) -> int | None:
    """The HTTP status of a GET, None when nothing answers (not listening yet, connection refused)."""
    try:
        return httpx.get(url, timeout=timeout, **kw).status_code
    except httpx.HTTPError:
        return None


def record(file: str = "figures.json", **figures: Any) -> None:
    """Add figures to CT_CACHE/<file> (figures.json; faults.json for tests/container_faults), which the script
    prints at the end."""
    path = CACHE / file
    data = json.loads(path.read_text()) if path.exists() else {}
    if "CT_BUILD_SECONDS" in os.environ:
        data.setdefault("image build (docker build --no-cache), s", float(os.environ["CT_BUILD_SECONDS"]))
    data.update(figures)
    path.write_text(json.dumps(data, indent=1) + "\n")


def wait_consul_leader(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{CONSUL}/v1/status/leader", timeout=2)
            if r.status_code == 200 and r.json():
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"consul at {CONSUL} had no leader after {timeout}s")


# ---- the stand-in for Registrator -------------------------------------------------------------------


def service_metadata(info: Mapping[str, Any], port: int) -> tuple[dict[str, str], set[str]]:
    """Registrator's serviceMetaData: SERVICE_* labels, then the environment over them, lower-cased without
    the prefix; a SERVICE_<port>_<KEY> for this port wins over SERVICE_<KEY> (and one for another port is
    skipped). Also the keys that came from the port-specific form."""
    config = info.get("Config", {})
    raw = {k: str(v) for k, v in (config.get("Labels") or {}).items()}
    for item in config.get("Env") or []:
        k, _, v = item.partition("=")
        raw[k] = v
    meta: dict[str, str] = {}
    from_port: set[str] = set()
    for k, v in raw.items():
        if not k.startswith("SERVICE_") or k == "SERVICE_":
            continue
        key = k[len("SERVICE_"):].lower()
        head, sep, rest = key.partition("_")
        if head.isdigit() and sep:
            if int(head) == port:
                meta[rest] = v
                from_port.add(rest)
        elif key not in from_port:
            meta[key] = v
    return meta, from_port


def split_tags(value: str) -> list[str]:
    """SERVICE_TAGS split on commas that are not escaped (`\\,` keeps a comma inside a tag), as Registrator."""
    return [t.replace("\\,", ",") for t in re.split(r"(?<!\\),", value) if t]


def registration(info: Mapping[str, Any], port: int, ip: str, hostname: str,
                 group: bool = False, host_port: int | None = None) -> dict[str, Any] | None:
    """The agent-API registration Registrator v7 (-internal) writes for one container port; None if ignored.

    ID `<registrator host>:<container name>:<port>`; name SERVICE_NAME, else the image's base name without
    its tag, with `-<port>` appended when the container has several ports (`group`) unless the name is
    port-specific; tags from SERVICE_TAGS; an HTTP check from SERVICE_CHECK_HTTP (else a TCP check of
    Address:Port from SERVICE_CHECK_TCP), SERVICE_CHECK_INTERVAL (10s) and SERVICE_CHECK_TIMEOUT. Any non-empty SERVICE_IGNORE ignores it. `port` is the container's
    (exposed) port; `host_port` the published one, which Address:Port and the check use when given.
    """
    meta, from_port = service_metadata(info, port)
    if meta.get("ignore"):
        return None
    image = str(info.get("Config", {}).get("Image", ""))
    name = meta.get("name") or image.rsplit("/", 1)[-1].split(":", 1)[0]
    if group and "name" not in from_port:
        name += f"-{port}"
    reg: dict[str, Any] = {
        "ID": f"{hostname}:{str(info.get('Name', '')).lstrip('/')}:{port}",
        "Name": name, "Tags": split_tags(meta.get("tags", "")), "Address": ip, "Port": host_port or port,
    }
    check: dict[str, str] = {}
    if meta.get("check_http"):
        check = {"HTTP": f"http://{ip}:{host_port or port}{meta['check_http']}"}
    elif meta.get("check_tcp"):
        check = {"TCP": f"{ip}:{host_port or port}"}
    if check:
        check["Interval"] = meta.get("check_interval") or "10s"
        if meta.get("check_timeout"):
            check["Timeout"] = meta["check_timeout"]
        reg["Check"] = check
    return reg


def container_ports(info: Mapping[str, Any], address: str) -> list[tuple[int, str, int]]:
    """(container port, address, port) for each TCP port Registrator registers, as its bridge does.

    "internal" (`-internal`): every exposed port at the container's IP on its network. "published" (the
    default): only published ports, at the first binding's host IP and port, so traffic goes through Docker's
    port mapping (with --iptables=false, the userland proxy, docker-proxy).
    """
    settings = info.get("NetworkSettings") or {}
    bound = settings.get("Ports") or {}
    exposed = set((info.get("Config") or {}).get("ExposedPorts") or {}) | set(bound)
    ip = settings.get("IPAddress") or ""
    mode = str((info.get("HostConfig") or {}).get("NetworkMode", ""))
    nets = settings.get("Networks") or {}
    if mode in nets:  # a user-defined network: the address is on it, not on the default bridge
        ip = nets[mode].get("IPAddress") or ip
    out = []
    for key in sorted(exposed):
        num, _, proto = key.partition("/")
        if proto not in ("", "tcp"):
            continue
        if address == "internal":
            out.append((int(num), ip, int(num)))
        elif bound.get(key):
            b = bound[key][0]
            out.append((int(num), b.get("HostIp") or "", int(b["HostPort"])))
    return out


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from /proc: its socket inodes matched against its netns's tables.

    Registrator reads the ports a container exposes; these containers share one loopback, so each demo
    replica listens on a port of its own choosing (PORT=0) and this is where the stand-in finds it.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


class Registrator:
    """Registers the containers of one compose project (or those with `label`) in Consul on `start`,
    deregisters them on `die`, the way Registrator does from the Docker event stream (plus one sync of what
    already runs).

    `address`: "loopback" for the stack on one shared loopback (127.0.0.1 and the port the process listens
    on, found in /proc, once it listens); "internal" or "published" as Registrator with or without
    `-internal` (see container_ports), registered at once on `start`, before the program listens, as
    Registrator does.
    """

    def __init__(self, project: str = "", *, label: str = "", address: str = "loopback",
                 consul: str = CONSUL) -> None:
        assert address in ("loopback", "internal", "published"), address
        self.project = project
        self.label = label or f"com.docker.compose.project={project}"
        self.address = address
        self.consul = consul
        self.hostname = socket.gethostname()
        self.registered: dict[str, list[str]] = {}  # container id -> service IDs
        self.log: list[str] = []
        self.errors: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [DOCKER, "events", "--format", "{{json .}}", "--filter", "type=container",
             "--filter", f"label={self.label}",
             "--filter", "event=start", "--filter", "event=die"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "DOCKER_HOST": os.environ["CT_DOCKER_HOST"]})
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        for cid in docker("ps", "-q", "--filter", f"label={self.label}").split():
            self._started(cid)

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(10)

    def _follow(self) -> None:
        assert self._proc and self._proc.stdout
        for line in self._proc.stdout:
            try:
                ev = json.loads(line)
                if ev.get("status") == "start":
                    self._started(ev["id"])
                elif ev.get("status") == "die":
                    self._died(ev["id"])
            except Exception as e:  # noqa: BLE001 - keep following; the test asserts errors == []
                self.errors.append(f"{line.strip()[:200]}: {e!r}")

    def _started(self, cid: str) -> None:
        (info,) = json.loads(docker("inspect", cid))
        if service_metadata(info, 0)[0].get("ignore"):
            return
        if self.address != "loopback":
            mapped = container_ports(info, self.address)
            for exposed, ip, port in mapped:
                self._register(cid, registration(info, exposed, ip, self.hostname, group=len(mapped) > 1,
                                                 host_port=port))
            return
        pid = info["State"]["Pid"]
        deadline = time.monotonic() + 20
        ports: set[int] = set()
        while not ports and time.monotonic() < deadline:
            ports = listening_ports(pid)
            if not ports:
                time.sleep(0.1)
        if not ports:
            self.errors.append(f"{info['Name']}: no listening port within 20 s")
            return
        for port in sorted(ports):
            self._register(cid, registration(info, port, "127.0.0.1", self.hostname, group=len(ports) > 1))

    def _register(self, cid: str, reg: dict[str, Any] | None) -> None:
        if reg is None:
            return
        r = httpx.put(f"{self.consul}/v1/agent/service/register", json=reg, timeout=5)
        if r.status_code != 200:
            self.errors.append(f"register {reg['ID']}: {r.status_code} {r.text}")
            return
        with self._lock:
            self.registered.setdefault(cid, []).append(reg["ID"])
        self.log.append(f"{time.monotonic():.1f} register {reg['ID']} {reg['Address']}:{reg['Port']} {reg['Tags']}")

    def _died(self, cid: str) -> None:
        with self._lock:
            ids = self.registered.pop(cid, [])
        for sid in ids:
            r = httpx.put(f"{self.consul}/v1/agent/service/deregister/{sid}", timeout=5)
            if r.status_code != 200:
                self.errors.append(f"deregister {sid}: {r.status_code} {r.text}")
            self.log.append(f"{time.monotonic():.1f} deregister {sid}")
