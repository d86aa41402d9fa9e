"""Helpers of tests/container_faults/: demo containers on the private bridge, the router and Consul on this
namespace's loopback, steady keep-alive load through the router, counted per phase.

Everything runs in the network namespace of a container on CT_FAULTS_NET (scripts/container_test.sh runs
pytest there under nsenter): 127.0.0.1 is that namespace's own loopback, the demo containers are at their
bridge addresses, and ports Docker publishes (docker-proxy, since the engine runs with --iptables=false) are on
the bridge's gateway address CT_FAULTS_GATEWAY. Nothing here can reach past the bridge.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.container.engine import DEMO_IMAGE, docker

NET = os.environ.get("CT_FAULTS_NET", "")
GATEWAY = os.environ.get("CT_FAULTS_GATEWAY", "")
LABEL = "consul-router-ct-faults=1"  # what the Registrator stand-in follows, and what a test's cleanup removes


def run_demo(name: str, service: str, *, publish: bool = False, check: str = "http", listen_port: int = 8080,
             drain: float = 3, interval: str = "1s") -> tuple[str, str]:
    """`docker run` one demo container as a new user would for Registrator: SERVICE_NAME, a urlprefix tag,
    and a check every second: HTTP (GET /health) or TCP (a connect: through docker-proxy that always passes). publish: `-p <gateway>::8080`, an ephemeral host port
    through docker-proxy. listen_port other than 8080: the program listens where nothing is published, so
    docker-proxy accepts and then closes every connection. Its (short container ID, bridge address)."""
    args = ["run", "-d", "--name", name, "--network", NET, "--label", LABEL,
            "-e", f"SERVICE_NAME={service}", "-e", f"SERVICE_TAGS=urlprefix-/{service}",
            "-e", f"DRAIN_SECONDS={drain:g}", "-e", f"PORT={listen_port}"]
    assert check in ("http", "tcp"), check
    args += ["-e", "SERVICE_CHECK_HTTP=/health" if check == "http" else "SERVICE_CHECK_TCP=true",
             "-e", f"SERVICE_CHECK_INTERVAL={interval}", "-e", "SERVICE_CHECK_TIMEOUT=1s"]
    if publish:
        args += ["-p", f"{GATEWAY}::8080"]
    cid = docker(*args, DEMO_IMAGE)[:12]
    return cid, ip_of(name)


def ip_of(name: str) -> str:
    return docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NET}").IPAddress}}}}', name)


def remove_all() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}").split()
    if ids:
        docker("rm", "-f", *ids, check=False)


def passing(consul: str, service: str) -> dict[str, str]:
    """Service ID -> "address:port" of the instances whose checks pass (what the router routes)."""
    r = httpx.get(f"{consul}/v1/health/service/{service}?passing=1", timeout=5)
    r.raise_for_status()
    return {e["Service"]["ID"]: f"{e['Service']['Address']}:{e['Service']['Port']}" for e in r.json()}


def instances(ui: str, service: str) -> dict[str, dict[str, Any]]:
    """The router's /api/services/<name>: instance ID -> its entry (with the proxy state under "proxy")."""
    r = httpx.get(f"{ui}/api/services/{service}", timeout=5)
    if r.status_code == 404:
        return {}
    r.raise_for_status()
    return {i["id"]: i for i in r.json().get("instances", [])}


COUNTERS = ("upstream_retries", "upstream_hedges", "upstream_retry_budget_exhausted", "upstream_ejections",
            "upstream_connect_failures")


def counters(ui: str) -> dict[str, float]:
    """The router's issue-17 counters from /metrics (totals)."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in httpx.get(f"{ui}/metrics", timeout=5).text.splitlines():
        name, _, value = line.partition(" ")
        short = name.removeprefix("consul_router_").removesuffix("_total")
        if short in out and not line.startswith("#"):
            out[short] += float(value)
    return out


@dataclass
class Sample:
    phase: str
    sent: float
    took: float
    method: str
    outcome: str  # the status code, or the httpx exception's name
    instance: str  # who answered (the demo's container ID), "" if it did not


@dataclass
class Load:
    """`clients` keep-alive clients sending to `url` in a loop (`pause` between requests), each request
    counted under the phase current when it was sent. `methods` cycles per client (GET, POST, ...)."""

    url: str
    clients: int = 8
    pause: float = 0.01
    timeout: float = 5.0
    methods: tuple[str, ...] = ("GET",)
    metrics: Callable[[], dict[str, float]] | None = None  # counters(ui), snapshotted at every mark
    phase: str = "warmup"
    samples: list[Sample] = field(default_factory=list)
    marks: list[tuple[str, str]] = field(default_factory=list)
    snaps: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, phase: str) -> None:
        """From now on, requests count under `phase` (its wall-clock start goes into `marks`, to read the
        router's log against)."""
        self.phase = phase
        if self.metrics:
            self.snaps.append((phase, self.metrics()))
        self.marks.append((phase, time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]))

    def start(self) -> Load:
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        if self.metrics:
            self.snaps.append(("end", self.metrics()))

    def _run(self, i: int) -> None:
        n = i
        with httpx.Client(timeout=self.timeout, trust_env=False) as c:
            while not self._stop.is_set():
                method = self.methods[n % len(self.methods)]
                n += 1
                phase, sent = self.phase, time.monotonic()
                try:
                    r = c.request(method, self.url, content=b"x" * 64 if method == "POST" else None)
                    outcome = str(r.status_code)
                    inst = r.text.split(" instance=", 1)[-1].split(" ", 1)[0] if r.status_code == 200 else ""
                except httpx.HTTPError as e:
                    outcome, inst = type(e).__name__, ""
                s = Sample(phase, sent, time.monotonic() - sent, method, outcome, inst)
                with self._lock:
                    self.samples.append(s)
                time.sleep(self.pause)

    def of(self, phase: str) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.phase == phase]

    def summary(self, phase: str, ok: frozenset[str] = frozenset({"200"})) -> dict[str, Any]:
        """Requests, failures (an outcome not in `ok`), the outcomes, and requests slower than 1 s."""
        ss = self.of(phase)
        t0 = ss[0].sent if ss else 0.0
        i = next((i for i, (p, _) in enumerate(self.snaps) if p == phase), -1)
        router = {} if i < 0 or i + 1 >= len(self.snaps) else {
            k.removeprefix("upstream_"): round(v - self.snaps[i][1][k]) for k, v in self.snaps[i + 1][1].items()}
        return {"router counters": router, "requests": len(ss), "failed": sum(s.outcome not in ok for s in ss),
                "outcomes": dict(Counter(f"{s.method} {s.outcome}" for s in ss)),
                "slower than 1 s": sum(s.took > 1 for s in ss),
                "failures (s into the phase, s taken, outcome)": [
                    (round(s.sent - t0, 2), round(s.took, 2), s.outcome) for s in ss if s.outcome not in ok][:10]}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
