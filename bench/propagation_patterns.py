"""Propagation under the ways Consul really changes (issue 18): new instances, bursts, rolling deploys.

    CONSUL=/path/to/consul python -m bench.propagation --patterns                  # 0 and 3,000, both ways
    CONSUL=... python -m bench.propagation --patterns --background 0 3000 30000    # the issue's sizes
    CONSUL=... python -m bench.propagation --patterns --modes catalog --background 100000 --rounds 5

Per (registration mode, background size) a fresh `consul agent -dev`, the background instances, the real
router (tests/router_proc.py, one worker), then four patterns, each change made through the agent's HTTP
API as Registrator makes it:

1. new: a new service registered critical, passing 0.2 s later: "pass" -> the first request through the
   proxy that reaches it (`up`, timed at the backend: `Fleet.reached`); then failed: "fail" -> the proxy answers 404 (`critical`); then
   passing again and deregistered: "deregister" -> 404 (`dereg last`).
2. deregistration of one of two instances of a service (nothing else about the service changes, so only
   the instance reconcile can see it): "deregister" -> the last request it answered (`dereg one`).
3. burst: 50 services registered critical beforehand, their 50 checks set passing at once (50
   connections opened first, the 50 PUTs written back to back: `RawPut`): time from the first update
   until each is routed (p90, and the last = `burst last`).
4. rolling deploy: one service with 30 instances under load (2 client threads, back to back); each
   0.2 s (5/s) a new instance is registered critical and passed, then an old one deregistered; the old
   backend stops answering (connections reset) 1 s after its deregistration, as with a pre-stop delay.
   Failed requests = anything but 200; worst change = the longest "pass -> first request reaching the
   new instance" or "deregister -> last request reaching the old one".

Background, `agent` mode: N instances (3 per service, a TTL check passing, `urlprefix-` tags) that are the
agent's own services, as Registrator leaves them: loaded from a service-definition file at the agent's
start (through `PUT /v1/agent/service/register` 3,000 took 37-166 s here, growing with N: the agent
re-syncs its whole state per registration). `catalog` mode: bench/propagation.py's 100 external nodes
with catalog-level passing checks. Every backend is one aiohttp server in this process with one listening
socket per instance on its own loopback address, so an answer names its instance.

Figures are wall-clock on whatever machine runs this: compare sizes and modes within one run.

Past 400 lines on purpose: the four patterns share this module's fleet of backends, agent helpers and
load, and are read side by side with the table they produce; the set-up shared with the plain
propagation benchmark stays in bench/propagation.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx
from aiohttp import web

from bench.propagation import (
    DEAD_PORT,
    PER_SERVICE,
    _rss_kb,
    dead_addr,
    pct,
    register_background,
    rss_by_process,
)
from tests.consul_agent import ConsulAgent, free_ports
from tests.router_proc import RouterProc


def _own_rss_kb(pid: int) -> int:
    """VmRSS of `pid` alone (without the dump helper)."""
    try:
        return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": round(pct(xs, 50), 1), "p90": round(pct(xs, 90), 1), "max": round(max(xs), 1),
            "mean": round(statistics.fmean(xs), 1)}


# ---------------------------------------------------------------- backends


class Fleet:
    """Many backend instances in one thread: instance k listens on 127.0.<net>.<k>:port and answers its name.

    `kill(k)` makes an instance reset every connection (new and kept-alive), as a stopped container would.
    """

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.dead: set[str] = set()
        self.arrivals: dict[str, list[float]] = {}  # instance -> monotonic times requests reached it
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._sites: dict[str, web.TCPSite] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet", daemon=True)
        self._thread.start()
        self._call(self._setup())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        addr = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        self.arrivals.setdefault(addr, []).append(time.monotonic())
        if addr in self.dead:  # a kept-alive connection to a stopped instance: reset
            if request.transport:
                request.transport.abort()
        return web.Response(text=addr, headers={"X-Instance": addr})

    async def _add(self, addr: str) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, addr, self.port)
        await site.start()
        self._sites[addr] = site

    def add(self, addr: str) -> str:
        self._call(self._add(addr))
        return addr

    def kill(self, addr: str) -> None:
        """New connections are refused, kept-alive ones reset."""
        self.dead.add(addr)
        site = self._sites.pop(addr, None)
        if site is not None:
            self._call(site.stop())

    def reached(self, addr: str, after: float) -> float:
        """When the first request after `after` reached instance `addr` (inf: none): "routed", as the issue
        defines it, without the answer's way back to the client (one more wake-up of two processes)."""
        return next((t for t in self.arrivals.get(addr, ()) if t >= after), float("inf"))

    def stop(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def addr(net: int, k: int) -> str:
    return f"127.0.{net}.{k + 1}"


# ---------------------------------------------------------------- Consul


class Agent:
    """The agent HTTP API, as Registrator uses it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.c = httpx.Client(base_url=url, timeout=30, trust_env=False, limits=httpx.Limits(max_connections=16))

    def register(self, sid: str, name: str, address: str, port: int, path: str, status: str = "critical") -> None:
        self.c.put("/v1/agent/service/register", json={
            "ID": sid, "Name": name, "Address": address, "Port": port, "Tags": [f"urlprefix-{path}"],
            "Check": {"CheckID": f"{sid}-ttl", "TTL": "10h", "Status": status}}).raise_for_status()

    def check(self, sid: str, status: str) -> None:
        verb = {"passing": "pass", "critical": "fail"}[status]
        self.c.put(f"/v1/agent/check/{verb}/{sid}-ttl").raise_for_status()

    def deregister(self, sid: str) -> None:
        self.c.put(f"/v1/agent/service/deregister/{sid}").raise_for_status()

    def raw_check(self, sid: str, status: str) -> RawPut:
        """The check update as a RawPut, connected and not yet sent."""
        verb = {"passing": "pass", "critical": "fail"}[status]
        return RawPut(str(self.c.base_url), f"/v1/agent/check/{verb}/{sid}-ttl")

    def raw_deregister(self, sid: str) -> RawPut:
        return RawPut(str(self.c.base_url), f"/v1/agent/service/deregister/{sid}")


PUT_SOURCE = "127.0.0.2"


class RawPut:
    """A PUT to the agent on a connection of its own, opened beforehand: `send()` writes it and returns at
    once, `finish()` reads the answer later.

    The change is then in Consul's hands while the caller already polls the proxy. Through a blocking
    client the poll began only when the agent answered the PUT, which it does after its own sync to the
    catalog: 4-38 ms on the shared machine, while blocking queries had seen the change after 3-4 ms
    (bench/propagation_trace.py), so every "up" figure held the PUT's whole answer time. For the burst, 50
    of them are opened first and written back to back (within a millisecond), one connection per change:
    25 threads of a blocking client took ~200 ms to hand Consul the 50 updates, twice the issue's 100 ms.
    """

    def __init__(self, url: str, path: str) -> None:
        host, port = url.split("://", 1)[-1].rsplit(":", 1)
        # from a source address of its own: Registrator runs on other hosts than the router, and Consul limits
        # connections per client address (http_max_conns_per_client, 200), which the router's ~90 and the
        # burst's 50 would otherwise share (one burst PUT at 3,000 agent-registered was closed unanswered: the
        # likely cause; not seen again since)
        self.sock = socket.create_connection((host, int(port)), timeout=30, source_address=(PUT_SOURCE, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.path = path
        self.req = (f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n"
                    "Connection: close\r\n\r\n").encode()

    def send(self) -> RawPut:
        self.sock.sendall(self.req)
        return self

    def finish(self) -> float:
        """Read the whole answer (the agent closes the connection); raises unless HTTP 200. Returns the
        monotonic time it was complete."""
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"PUT {self.path}: {data[:200]!r}")
        return time.monotonic()


def agent_services_file(instances: int, path: Path) -> Path:
    """N background instances as the agent's own services (a service-definition file read at start)."""
    services = []
    for i in range(instances):
        svc = f"bg{i // PER_SERVICE:05d}"
        sid = f"{svc}-{i % PER_SERVICE}"
        services.append({"id": sid, "name": svc, "address": dead_addr(i), "port": DEAD_PORT,
                         "tags": [f"urlprefix-/{svc}"],
                         "check": {"id": f"{sid}-ttl", "ttl": "10h", "status": "passing"}})
    path.write_text(json.dumps({"services": services}))
    return path


def start_consul(mode: str, instances: int, tmp: Path, data_dir: Path | None = None) -> tuple[ConsulAgent, float]:
    """A dev agent with `instances` background instances registered `mode`'s way; seconds to set up.
    With `data_dir`: a single server keeping its data there instead of a dev agent."""
    t0 = time.monotonic()
    args = []
    if mode == "agent" and instances:
        args = [f"-config-file={agent_services_file(instances, tmp / 'services.json')}"]
    agent = ConsulAgent(extra_args=args, ready_timeout=900, workdir=tmp / "consul", data_dir=data_dir)
    agent.start()
    if mode == "catalog" and instances:
        register_background(agent.http_url, instances)
    with httpx.Client(base_url=agent.http_url, timeout=120, trust_env=False) as c:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:  # the agent syncs its services to the catalog in the background
            if len(c.get("/v1/health/state/passing").json()) >= instances:
                break
            time.sleep(1)
    return agent, time.monotonic() - t0


_WATCH = r"""
import http.client, json, sys, time
host, port, path, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
index, c = "1", None
with open(out, "a", buffering=1) as f:
    while True:
        try:
            if c is None:
                c = http.client.HTTPConnection(host, port, timeout=30)
            c.request("GET", f"{path}?index={index}&wait=5s")
            r = c.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            c = None
            time.sleep(0.1)
            continue
        t, w = time.monotonic(), time.time()
        RECORD
        f.write(json.dumps(rec) + "\n")
        index = r.getheader("X-Consul-Index", "1")
"""


def watch_script(record: str) -> str:
    """A plain blocking query, for `python -c SCRIPT host port path out`: a process of its own (standard
    library only, CLOCK_MONOTONIC stamps), each answer appended to `out` as the JSON of `rec`, which
    `record` (statements on one line) sets from t, w (time.time()), r (the response) and body."""
    return _WATCH.replace("RECORD", record)


class AloneWatch:
    """Consul alone: a plain blocking query on `path`, each answer timed and recorded by `record`
    (watch_script).

    It runs in a process of its own (standard library only, timestamps on CLOCK_MONOTONIC, which every
    process on the machine shares): as a thread of this process it waited for the interpreter lock held by
    the poll loop and the backends' thread, and saw changes later than the router did (11 against 4 ms
    median). Its answers are the floor no watcher beats, on this machine at this moment.
    """

    def __init__(self, url: str, path: str, record: str) -> None:
        host, port = url.split("://", 1)[-1].rsplit(":", 1)
        fd, self._path = tempfile.mkstemp(prefix="alone-watch-", suffix=".jsonl")
        os.close(fd)
        self._args = [sys.executable, "-c", watch_script(record), host, port, path, self._path]
        self._proc: subprocess.Popen[bytes] | None = None
        self._answers: list[Any] = []
        self._read = 0

    def start(self) -> Self:
        self._proc = subprocess.Popen(self._args)
        deadline = time.monotonic() + 30
        while not self.answers() and time.monotonic() < deadline:  # its first answer (index 1: at once)
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        Path(self._path).unlink(missing_ok=True)

    def parse(self, rec: list[Any]) -> Any:
        return rec

    def _first(self, after: float, wall: bool, cond: Callable[[Any], bool]) -> float:
        """When Consul first answered, after `after`, with an answer that meets `cond`: monotonic time, or
        time.time() with `wall` (each answer's first two fields)."""
        for rec in self.answers():
            at = rec[1] if wall else rec[0]
            if at >= after and cond(rec):
                return at
        return float("inf")

    def answers(self) -> list[Any]:
        with open(self._path) as f:
            f.seek(self._read)
            text = f.read()
        done = text.rfind("\n") + 1
        self._read += done
        self._answers.extend(self.parse(json.loads(line)) for line in text[:done].splitlines())
        return self._answers


class CriticalWatch(AloneWatch):
    """Consul alone for check states: `/v1/health/state/critical`. `seen(check_id, critical, after)` is when
    Consul first answered with that check in (or out of) the critical list after `after`; `wall` compares
    and returns time.time() instead."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "/v1/health/state/critical", 'rec = [t, w, [x["CheckID"] for x in json.loads(body)]]')

    def parse(self, rec: list[Any]) -> tuple[float, float, frozenset[str]]:
        return rec[0], rec[1], frozenset(rec[2])

    def seen(self, check_id: str, critical: bool, after: float, wall: bool = False) -> float:
        return self._first(after, wall, lambda rec: (check_id in rec[2]) == critical)


# each answer: monotonic and wall time, its index, the instances and those passing every check
_SERVICE_RECORD = ('es = json.loads(body) or []; rec = [t, w, int(r.getheader("X-Consul-Index", "1")), '
                   '[e["Service"]["ID"] for e in es], [e["Service"]["ID"] for e in es '
                   'if all(x["Status"] == "passing" for x in e.get("Checks") or ())]]')


class ServiceWatch(AloneWatch):
    """Consul alone for one service: `/v1/health/service/<name>` (it wakes for that service only), which
    shows what the state list cannot: an instance deregistered, the last one gone.

    `seen(sid, up, after)` is when Consul first answered, after `after`, with instance `sid` passing
    (`up`) or no longer among the instances (not `up`); `wall` compares and returns time.time() instead."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, f"/v1/health/service/{name}", _SERVICE_RECORD)

    def parse(self, rec: list[Any]) -> tuple[float, float, int, frozenset[str], frozenset[str]]:
        return rec[0], rec[1], rec[2], frozenset(rec[3]), frozenset(rec[4])

    def seen(self, sid: str, up: bool, after: float, wall: bool = False) -> float:
        return self._first(after, wall, lambda rec: (sid in rec[4]) if up else (sid not in rec[3]))


def table_swaps(router: RouterProc) -> list[tuple[float, str, str]]:
    """(wall time, "+" or "-", target URL) of every route line the router logged with a table change."""
    out: list[tuple[float, str, str]] = []
    at = 0.0
    for line in router.output().splitlines():
        if "routing table changed" in line:
            try:
                at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            except ValueError:
                continue
        elif line[:2] in ("+ ", "- ") and "route add" in line:
            out.append((at, line[0], line.rsplit(" ", 1)[-1]))
    return out


# ---------------------------------------------------------------- the router and the client


def registry_status(router: RouterProc) -> dict[str, Any]:
    return httpx.get(router.ui + "/api/status", timeout=30, trust_env=False).json()["registry"]


def first(cond, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    """Poll cond() back to back; the monotonic time it first held (inf after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return time.monotonic()
        except httpx.HTTPError:
            time.sleep(0.01)
    return float("inf")


def ms(t1: float, t0: float) -> float:
    return (t1 - t0) * 1000


class Load:
    """Client threads requesting `path` back to back through the proxy; every answer is kept."""

    def __init__(self, url: str, path: str, threads: int = 2) -> None:
        self.url, self.path = url, path
        self.log: list[tuple[float, int, str]] = []  # (monotonic time, status or 0 on error, instance)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(self.path)
                    self.log.append((time.monotonic(), r.status_code, r.headers.get("x-instance", "")))
                except httpx.HTTPError:
                    self.log.append((time.monotonic(), 0, ""))
                time.sleep(0.002)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


# ---------------------------------------------------------------- the patterns


def pattern_new(agent: Agent, fleet: Fleet, proxy: httpx.Client, rounds: int, consul: CriticalWatch,
                router: RouterProc | None = None) -> dict[str, Any]:
    up, crit, dereg_last, dereg_one, floor_up, floor_crit = [], [], [], [], [], []
    floor_dereg_one, floor_dereg_last = [], []  # Consul alone: the service's own blocking query (ServiceWatch)
    up_client: list[float] = []  # the same, when its answer was back at the client
    passes: list[tuple[str, float, float]] = []  # (instance, wall time of the pass, Consul alone's answer, wall)
    fails: list[tuple[str, float, float]] = []  # the same for the check set critical
    for k in range(rounds):
        svc = f"new{k}-{uuid.uuid4().hex[:4]}"
        path = f"/{svc}"
        a = fleet.add(addr(1, 2 * k))
        b = fleet.add(addr(1, 2 * k + 1))
        alone = ServiceWatch(agent.url, svc).start()
        agent.register(f"{svc}-a", svc, a, fleet.port, path)
        time.sleep(0.2)
        put = agent.raw_check(f"{svc}-a", "passing")
        t0, t0w = time.monotonic(), time.time()
        put.send()  # polled while the agent answers the PUT (RawPut)
        answered = first(lambda: proxy.get(path).status_code == 200)  # noqa: B023
        up.append(ms(min(answered, fleet.reached(a, t0)), t0))  # the first request that reached it
        up_client.append(ms(answered, t0))
        put.finish()
        floor_up.append(ms(consul.seen(f"{svc}-a-ttl", False, t0), t0))
        passes.append((a, t0w, consul.seen(f"{svc}-a-ttl", False, t0w, wall=True)))
        time.sleep(0.3)
        put = agent.raw_check(f"{svc}-a", "critical")
        t0, t0w = time.monotonic(), time.time()
        put.send()
        crit.append(ms(first(lambda: proxy.get(path).status_code == 404), t0))  # noqa: B023
        put.finish()
        floor_crit.append(ms(consul.seen(f"{svc}-a-ttl", True, t0), t0))
        fails.append((a, t0w, consul.seen(f"{svc}-a-ttl", True, t0w, wall=True)))
        # a second instance, both passing: then one of them deregistered (only the reconcile sees that)
        agent.check(f"{svc}-a", "passing")
        agent.register(f"{svc}-b", svc, b, fleet.port, path, status="passing")
        first(lambda: {proxy.get(path).headers.get("x-instance") for _ in range(6)} == {a, b})  # noqa: B023
        time.sleep(0.3)
        t0 = time.monotonic()
        agent.deregister(f"{svc}-b")
        last_b, streak = t0, 0
        deadline = t0 + 60
        while streak < 40 and time.monotonic() < deadline:  # 40 answers in a row from a alone: b is gone
            inst = proxy.get(path).headers.get("x-instance")
            if inst == b:
                last_b, streak = time.monotonic(), 0
            else:
                streak += 1
        dereg_one.append(ms(last_b, t0) if streak >= 40 else float("inf"))
        floor_dereg_one.append(ms(alone.seen(f"{svc}-b", False, t0), t0))
        time.sleep(0.3)
        put = agent.raw_deregister(f"{svc}-a")
        t0 = time.monotonic()
        put.send()
        dereg_last.append(ms(first(lambda: proxy.get(path).status_code == 404), t0))  # noqa: B023
        put.finish()
        time.sleep(0.3)
        floor_dereg_last.append(ms(alone.seen(f"{svc}-a", False, t0), t0))
        alone.stop()
    # the table swap with the new instance, from the router's log (ms resolution): the router's own
    # "routed", without the probe's round trip through the proxy and the backend
    swaps = table_swaps(router) if router is not None else []
    swapped = [next((t for t, sg, url in swaps if sg == "+" and f"//{a}:" in url and t >= w - 0.001), float("inf"))
               for a, w, _ in passes]
    up_swap = [ms(t, w) for t, (_, w, _) in zip(swapped, passes, strict=True)]
    share = [ms(t, c) for t, (_, _, c) in zip(swapped, passes, strict=True) if c != float("inf")]
    # the same for the check set critical: the swap without the instance (its route's "-" line)
    unswapped = [next((t for t, sg, url in swaps if sg == "-" and f"//{a}:" in url and t >= w - 0.001), float("inf"))
                 for a, w, _ in fails]
    crit_swap = [ms(t, w) for t, (_, w, _) in zip(unswapped, fails, strict=True)]
    crit_share = [ms(t, c) for t, (_, _, c) in zip(unswapped, fails, strict=True) if c != float("inf")]
    return {"up": stats(up), "up_client": stats(up_client), "up_swap": stats(up_swap), "up_swap_after_consul": stats(share),
            "critical": stats(crit), "critical_swap": stats(crit_swap), "critical_swap_after_consul": stats(crit_share), "dereg_one": stats(dereg_one), "dereg_last": stats(dereg_last),
            "consul_floor_up": stats(floor_up), "consul_floor_critical": stats(floor_crit),
            "consul_floor_dereg_one": stats(floor_dereg_one), "consul_floor_dereg_last": stats(floor_dereg_last)}


# Each burst's 50 instances listen on addresses of their own in 127.0.2.0/24 (addr(2, k), k < 254).
BURSTS_MAX = 5


def pattern_burst(agent: Agent, fleet: Fleet, router: RouterProc, consul: CriticalWatch, n: int = 50,
                  run: int = 0) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:4]
    names = [f"burst{tag}-{i:02d}" for i in range(n)]
    where = {name: fleet.add(addr(2, run * n + i)) for i, name in enumerate(names)}  # 127.0.2.x (BURSTS_MAX)
    for name in names:
        agent.register(f"{name}-1", name, where[name], fleet.port, f"/{name}")
    time.sleep(1.0)  # all registered and settled (critical: not routed)
    puts = {name: agent.raw_check(f"{name}-1", "passing") for name in names}  # connected, not sent (RawPut)
    s0 = registry_status(router)
    sent: dict[str, float] = {}
    t0 = time.time()
    for name, put in puts.items():
        sent[name] = time.time()  # before the request: Consul may pass the change on before it answers
        put.send()
    sent_ms = ms(max(sent.values()), t0)
    answered_ms = ms(max(put.finish() for put in puts.values()), time.monotonic()) + ms(time.time(), t0)
    # "routed" = the table with the change swapped in (the router's log, ms resolution): polling 50 paths
    # through the proxy from this process measured the client's sweep more than the router
    time.sleep(3.0)
    swaps = table_swaps(router)
    routed = {nm: next((t for t, sg, url in swaps if sg == "+" and f"//{where[nm]}:" in url
                            and t >= sent[nm] - 0.001), float("inf")) for nm in names}  # the log's ms are truncated
    floor = {nm: consul.seen(f"{nm}-1-ttl", False, sent[nm], wall=True) for nm in names}
    builds = len({t for t in routed.values() if t != float("inf")})
    s1 = registry_status(router)
    for name in names:
        agent.deregister(f"{name}-1")
    return {"updates_spread_ms": round(sent_ms, 1), "updates_answered_ms": round(answered_ms, 1),
            "last_routed_ms": round(ms(max(routed.values()), t0), 1),
            "per_change": stats([ms(routed[nm], sent[nm]) for nm in names]),
            "table_swaps": builds, "consul_requests": s1["requests"] - s0["requests"],
            "covered_by_hot_watches": s1.get("covered", 0) - s0.get("covered", 0),
            "consul_floor_last_ms": round(ms(max(floor.values()), t0), 1),
            "consul_floor_per_change": stats([ms(floor[nm], sent[nm]) for nm in names])}


def pattern_rolling(agent: Agent, fleet: Fleet, router: RouterProc, n: int = 30, per_s: float = 5.0) -> dict[str, Any]:
    svc = f"roll-{uuid.uuid4().hex[:4]}"
    path = f"/{svc}"
    old = [fleet.add(addr(3, i)) for i in range(n)]
    for i, a in enumerate(old):
        agent.register(f"{svc}-old{i}", svc, a, fleet.port, path, status="passing")
    with httpx.Client(base_url=router.url, timeout=5, trust_env=False) as c:
        first(lambda: len({c.get(path).headers.get("x-instance") for _ in range(3 * n)}) == n, 120)
    alone = ServiceWatch(agent.url, svc).start()
    load = Load(router.url, path).start()
    time.sleep(1.0)
    passed: dict[str, float] = {}
    deregistered: dict[str, float] = {}
    timers: list[threading.Timer] = []
    t_start = time.monotonic()
    for i in range(n):
        step = t_start + i / per_s
        time.sleep(max(0.0, step - time.monotonic()))
        new = fleet.add(addr(4, i))
        agent.register(f"{svc}-new{i}", svc, new, fleet.port, path)
        passed[new] = time.time()  # before the request: Consul may pass the change on before it answers
        agent.check(f"{svc}-new{i}", "passing")
        deregistered[old[i]] = time.time()
        agent.deregister(f"{svc}-old{i}")
        t = threading.Timer(1.0, fleet.kill, (old[i],))
        t.start()
        timers.append(t)
    for t in timers:
        t.join()
    time.sleep(2.0)
    load.stop()
    log = sorted(load.log)
    # when the table with each change was swapped in: the router's own log of route lines (ms resolution)
    swaps = table_swaps(router)
    def swapped(sign: str, a: str, after: float) -> float:
        return next((t for t, sg, url in swaps if sg == sign and f"//{a}:" in url and t >= after), float("inf"))
    new_ms = [ms(swapped("+", a, w), w) for a, w in passed.items()]
    old_ms = [ms(swapped("-", a, w), w) for a, w in deregistered.items()]
    # Consul alone for each change: the service's own blocking query showing the new instance passing, the
    # old one gone (wall clock, as the router's log); the share is the router's time after that answer
    sid = {a: f"{svc}-new{i}" for i, a in enumerate(passed)} | {a: f"{svc}-old{i}" for i, a in enumerate(old)}
    new_alone = [ms(alone.seen(sid[a], True, w, wall=True), w) for a, w in passed.items()]
    old_alone = [ms(alone.seen(sid[a], False, w, wall=True), w) for a, w in deregistered.items()]
    alone.stop()
    routed, alone_ms = new_ms + old_ms, new_alone + old_alone  # every change, in the same order
    shares = [r - c for r, c in zip(routed, alone_ms, strict=True) if c != float("inf")]
    worst = max(range(len(routed)), key=routed.__getitem__)
    failed = sum(1 for _, st, _ in log if st != 200)
    for i in range(n):
        agent.deregister(f"{svc}-new{i}")
    return {"requests": len(log), "failed": failed, "new_routed": stats(new_ms), "old_unrouted": stats(old_ms),
            "worst_change_ms": round(routed[worst], 1), "deploy_s": round(time.monotonic() - t_start - 2.0, 1),
            "consul_alone_new": stats(new_alone), "consul_alone_old": stats(old_alone),
            "consul_alone_worst_ms": round(max(alone_ms), 1),
            "worst_change_consul_alone_ms": round(alone_ms[worst], 1),
            "largest_share_ms": round(max(shares), 1) if shares else None}


# ---------------------------------------------------------------- one configuration


def run_one(mode: str, instances: int, rounds: int, flags: list[str], patterns: set[str],
            bursts: int = 1) -> dict[str, Any]:
    if not 1 <= bursts <= BURSTS_MAX:
        raise ValueError(f"bursts: 1 to {BURSTS_MAX}, not {bursts}")
    with tempfile.TemporaryDirectory(prefix="bench-prop-") as tmpdir:
        tmp = Path(tmpdir)
        agent_proc, setup_s = start_consul(mode, instances, tmp)
        fleet = Fleet()
        router: RouterProc | None = None
        try:
            t0 = time.monotonic()
            router = RouterProc("-registry.consul.addr", agent_proc.addr, *flags, wait_ready=False).start()
            proxy = httpx.Client(base_url=router.url, timeout=10, trust_env=False)
            last_bg = f"/bg{(instances - 1) // PER_SERVICE:05d}"
            ready = first(lambda: httpx.get(router.ui + "/health", timeout=30, trust_env=False).status_code == 200, 900)
            if instances:  # every background route in (they point at a dead port: 502, not 404)
                ready = first(lambda: proxy.get(last_bg).status_code != 404, 900)
            ready_s = time.monotonic() - t0 if ready != float("inf") else float("inf")
            time.sleep(2.0)
            rss_mb, parts = rss_by_process(router.proc.pid if router.proc else 0)
            print(f"{mode} {instances}: ready {ready_s:.2f} s, RSS {rss_mb} MB: "
                  + ", ".join(f"{role} {mb}" for role, mb in parts), flush=True)
            agent = Agent(agent_proc.http_url)
            out: dict[str, Any] = {"mode": mode, "background": instances, "setup_s": round(setup_s, 1),
                                   "ready_s": round(ready_s, 2), "rss_mb": rss_mb, "rss_by_process": parts}
            s0 = registry_status(router)
            consul = CriticalWatch(agent_proc.http_url).start()
            if "new" in patterns:
                out["new"] = pattern_new(agent, fleet, proxy, rounds, consul, router)
                s1 = registry_status(router)
                changes = rounds * 7  # register, pass, fail, pass, register b, deregister b, deregister a
                out["new"]["consul_requests_per_change"] = round((s1["requests"] - s0["requests"]) / changes, 1)
                out["new"]["dumps_per_change"] = round((s1.get("dumps", 0) - s0.get("dumps", 0)) / changes, 2)
            if "burst" in patterns:
                # CPU of the router and of Consul over the burst (no polling there: load-independent)
                pids = (router.proc.pid if router.proc else 0, agent_proc.pid or 0)
                runs = []
                for k in range(bursts):  # Consul alone's time for one burst varies 2-4x run to run
                    c0 = [cpu_s(p) for p in pids]
                    b = pattern_burst(agent, fleet, router, consul, run=k)
                    c1 = [cpu_s(p) for p in pids]
                    b["router_cpu_ms"] = round((c1[0] - c0[0]) * 1000)
                    b["consul_cpu_ms"] = round((c1[1] - c0[1]) * 1000)
                    runs.append(b)
                # the table shows the burst whose last change was routed at the median; every burst is kept
                out["burst"] = dict(sorted(runs, key=lambda b: b["last_routed_ms"])[(len(runs) - 1) // 2])
                out["burst"]["runs"] = [{k: b[k] for k in ("last_routed_ms", "consul_floor_last_ms",
                                                           "updates_answered_ms", "consul_requests")} for b in runs]
            if "rolling" in patterns:
                out["rolling"] = pattern_rolling(agent, fleet, router)
            consul.stop()
            st = registry_status(router)
            out["router_observed"] = st.get("propagation")
            out["paced"] = st.get("paced")
            out["last_dump"] = st.get("last_dump")
            out["rss_mb_after"] = round(_rss_kb(router.proc.pid if router.proc else 0) / 1024, 1)
            out["rss_mb_main_after"] = round(_own_rss_kb(router.proc.pid if router.proc else 0) / 1024, 1)
            return out
        finally:
            if router:
                router.stop()
            fleet.stop()
            agent_proc.stop()


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table docs/benchmarks.md shows: absolute figures, Consul alone, and the router's share
    (the router's figure minus Consul alone's, same row: the part a faster router could remove)."""
    def f(x: Any) -> str:
        return "–" if x is None else ("∞" if x == float("inf") else f"{x:g}")

    def share(a: Any, b: Any) -> str:
        inf = float("inf")
        return "–" if a is None or b is None or inf in (a, b) else f(round(a - b, 1))

    def spread(b: dict[str, Any]) -> str:  # more than one burst: every burst's last routed (Consul alone's)
        runs = b.get("runs") or []
        if len(runs) < 2:
            return ""
        return " [" + ", ".join(f"{f(x['last_routed_ms'])} ({f(x['consul_floor_last_ms'])})" for x in runs) + "]"

    rows = ["| code | mode | background | new: up p50 / p90 ms (Consul alone p90; router's share) | "
            "new: table swap p50 / p90 ms (after Consul alone's answer: p50 / p90) | "
            "critical p50 / p90 (Consul alone p90; share) | dereg one p90 (Consul alone p90) | "
            "dereg last p90 (Consul alone p90; share) | "
            "burst: last routed ms (Consul alone; share) [every burst, when more than one] | burst per change p90 (Consul alone) | "
            "burst: PUTs written within / answered by ms; Consul requests; table swaps; CPU ms router / Consul | "
            "rolling: failed / requests, worst ms (Consul alone for that change; Consul alone's worst; largest share) | "
            "Consul requests per change (dumps) | ready s, RSS MB |",
            "|---|---|---:|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        n, b, ro = r.get("new", {}), r.get("burst", {}), r.get("rolling", {})
        up, cu = n.get("up", {}), n.get("consul_floor_up", {})
        cr, cc = n.get("critical", {}), n.get("consul_floor_critical", {})
        sw, sa = n.get("up_swap", {}), n.get("up_swap_after_consul", {})
        bp, cbp = b.get("per_change", {}), b.get("consul_floor_per_change", {})
        do, dl = n.get("consul_floor_dereg_one", {}), n.get("consul_floor_dereg_last", {})
        rows.append(
            f"| {r.get('code', '–')} | {r['mode']} | {r['background']:,} | "
            f"{f(up.get('p50'))} / {f(up.get('p90'))} ({f(cu.get('p90'))}; {share(up.get('p90'), cu.get('p90'))}) | "
            f"{f(sw.get('p50'))} / {f(sw.get('p90'))} ({f(sa.get('p50'))} / {f(sa.get('p90'))}) | "
            f"{f(cr.get('p50'))} / {f(cr.get('p90'))} ({f(cc.get('p90'))}; {share(cr.get('p90'), cc.get('p90'))}) | "
            f"{f(n.get('dereg_one', {}).get('p90'))} ({f(do.get('p90'))}) | "
            f"{f(n.get('dereg_last', {}).get('p90'))} ({f(dl.get('p90'))}; {share(n.get('dereg_last', {}).get('p90'), dl.get('p90'))}) | "
            f"{f(b.get('last_routed_ms'))} ({f(b.get('consul_floor_last_ms'))}; "
            f"{share(b.get('last_routed_ms'), b.get('consul_floor_last_ms'))}){spread(b)} | "
            f"{f(bp.get('p90'))} ({f(cbp.get('p90'))}) | "
            f"{f(b.get('updates_spread_ms'))} / {f(b.get('updates_answered_ms'))}; {f(b.get('consul_requests'))}; "
            f"{f(b.get('table_swaps'))}; "
            f"{f(b.get('router_cpu_ms'))} / {f(b.get('consul_cpu_ms'))} | "
            f"{f(ro.get('failed'))} / {f(ro.get('requests'))}, {f(ro.get('worst_change_ms'))} "
            f"({f(ro.get('worst_change_consul_alone_ms'))}; {f(ro.get('consul_alone_worst_ms'))}; {f(ro.get('largest_share_ms'))}) | "
            f"{f(n.get('consul_requests_per_change'))} ({f(n.get('dumps_per_change'))}) | "
            f"{f(r['ready_s'])}, {f(r['rss_mb'])} |")
    return "\n".join(rows)
