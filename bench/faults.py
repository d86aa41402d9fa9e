"""Issue 17's fault matrix: one of three instances faulted under steady load, through each proxy.

A route with 3 instances (real processes: `python -m bench.faults backend PORT NAME`), 16 keep-alive
clients at a steady total rate with a 2 s timeout, every 10th request a POST carrying a unique id. After
a baseline, one instance is faulted for `--fault` seconds, then healed; the load goes on for `--heal`
seconds. Faults:

- killed: SIGKILL; connections are refused. Healed: restarted on its port.
- blackholed: killed, and its port taken by a listener with backlog 0 whose queue is full and never
  accepted, so SYNs are dropped and connects hang (a real blackhole). Healed: restarted.
- stalled: accepts and reads requests, never answers. slow: answers in 10x the others' time.
- body-stalled: sends the response headers (with a Content-Length), then never the body.
- failing: answers every request 503. reset: sends the headers and part of the body, then a TCP reset.
- all-failing, all-blackholed, all-stalled: all three at once (honest 502/503/504 expected, retries
  within the budget; with no response-header timeout configured, a stall can only end at the client).

Per row: idempotent requests failed, requests slower than 1 s, p99 before and during the fault, POSTs that
failed, POST ids that reached two instances (must be 0: a witness), seconds from healing until the
instance answers again, and for our router the retries and hedges from /metrics.

    python bench/faults.py --out docs/reliability.md          # `make bench-faults`
    python bench/faults.py --rows killed,stalled --proxies router --fault 4

Past 400 lines on purpose: the instance processes run this very module (`-m bench.faults backend`), and
the backend, the faults done to it, the load that measures them and the proxies under test are read
together to check a row; tests/test_reliability_faults.py runs rows through `run_row`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_LATENCY = 0.005  # seconds an instance takes to answer; slow: 10x
ROWS = ("killed", "blackholed", "stalled", "body-stalled", "slow", "failing", "reset", "all-failing", "all-blackholed", "all-stalled")
PROXIES = ("router", "traefik", "caddy", "nginx")
MARK_START = "<!-- faults-bench:start -->"
MARK_END = "<!-- faults-bench:end -->"


# --------------------------------------------------------------------------- the instances


def serve(port: int, name: str) -> None:
    """A backend whose behaviour is switched by POST /__fault?mode=ok|slow|stall|nobody|fail|reset."""
    from aiohttp import web

    state = {"mode": "ok"}
    seen: list[str] = []
    never = asyncio.Event()

    async def control(request: web.Request) -> web.Response:
        if request.path == "/__seen":
            return web.json_response(seen)
        state["mode"] = request.query.get("mode", "ok")
        if state["mode"] not in ("stall", "nobody"):  # a stalled process that recovers answers what it had queued
            never.set()
            never.clear()
        return web.Response(text=state["mode"])

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path in ("/__fault", "/__seen"):
            return await control(request)
        await request.read()
        mode = state["mode"]
        if request.method == "POST" and mode != "stall":
            seen.append(request.headers.get("x-req-id", ""))
        if mode == "stall":
            if request.method == "POST":
                seen.append(request.headers.get("x-req-id", ""))
            await never.wait()
        await asyncio.sleep(BASE_LATENCY * (10 if mode == "slow" else 1))
        if mode == "nobody":  # the head goes out, the body never (until healed)
            body = (name + "\n").encode() * 200
            resp = web.StreamResponse(headers={"X-Backend": name})
            resp.content_length = len(body)
            await resp.prepare(request)
            await never.wait()
            with contextlib.suppress(ConnectionResetError):  # healed: the router has long closed this one
                await resp.write(body)
            return resp
        if mode == "fail":
            return web.Response(status=503, text="failing\n")
        body = (name + "\n").encode() * 200
        if mode == "reset":
            resp = web.StreamResponse(headers={"X-Backend": name})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[:100])
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            if request.transport is not None:
                request.transport.abort()
            return resp
        return web.Response(body=body, headers={"X-Backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, reuse_address=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, method: str = "GET", timeout: float = 2.0) -> bytes:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.read()


class Instance:
    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.hole: list[socket.socket] = []

    def start(self) -> Instance:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.faults", "backend", str(self.port), self.name],
                                     cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                http(f"http://127.0.0.1:{self.port}/__fault?mode=ok", "POST", 1)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"instance {self.name} did not start")

    def mode(self, mode: str) -> None:
        http(f"http://127.0.0.1:{self.port}/__fault?mode={mode}", "POST")

    def seen(self) -> list[str]:
        return json.loads(http(f"http://127.0.0.1:{self.port}/__seen"))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def blackhole(self) -> None:
        """Take the port with a listener whose accept queue is full: further SYNs are dropped."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                ls.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        ls.listen(0)
        self.hole = [ls]
        for _ in range(8):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except OSError:
                s.close()
                break
            self.hole.append(s)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise RuntimeError("blackhole: a connect completed; the queue is not full")
        except TimeoutError:
            pass
        finally:
            probe.close()

    def unhole(self) -> None:
        for s in self.hole:
            s.close()
        self.hole = []

    def stop(self) -> None:
        self.unhole()
        self.kill()


# --------------------------------------------------------------------------- the load


@dataclass
class Sample:
    t: float  # send time, relative to the load's start
    latency: float
    outcome: str  # status code, or the exception's name
    method: str
    backend: str
    rid: str


@dataclass
class Load:
    url: str
    rate: float = 200.0
    clients: int = 16
    timeout: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    t0: float = 0.0
    _stop: bool = False
    _thread: threading.Thread | None = None

    async def _client(self, k: int) -> None:
        import aiohttp

        period = self.clients / self.rate
        nxt = self.t0 + k / self.rate
        conn = aiohttp.TCPConnector(limit=1, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        n = 0
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            while not self._stop:
                delay = nxt - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                nxt += period
                n += 1
                method = "POST" if n % 10 == 0 else "GET"
                rid = f"{k}-{n}" if method == "POST" else ""
                t = time.monotonic()
                backend, outcome = "", ""
                try:
                    async with s.request(method, self.url, headers={"x-req-id": rid} if rid else None) as r:
                        body = await r.read()
                        outcome = str(r.status)
                        backend = r.headers.get("X-Backend", "")
                        if r.status == 200 and len(body) != (len(backend) + 1) * 200:
                            outcome = "short-body"
                except Exception as e:  # noqa: BLE001 - every failure is an outcome
                    outcome = type(e).__name__
                self.samples.append(Sample(t - self.t0, time.monotonic() - t, outcome, method, backend, rid))

    def start(self) -> Load:
        self.t0 = time.monotonic()

        def run() -> None:
            async def main() -> None:
                await asyncio.gather(*(self._client(k) for k in range(self.clients)))
            asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def now(self) -> float:
        return time.monotonic() - self.t0

    def stop(self) -> Load:
        self._stop = True
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self


def p99(xs: list[float]) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


@dataclass
class Row:
    proxy: str
    fault: str
    requests: int = 0
    idem_failed: int = 0
    slow: int = 0  # requests slower than 1 s
    p99_before: float = 0.0
    p99_during: float = 0.0
    post_failed: int = 0
    post_twice: int = 0
    back_after: float | None = None  # seconds from healing until the instance answered again
    retries: float | None = None
    hedges: float | None = None
    stalls: float | None = None  # tries ended because their instance was found stalled (ours)
    outcomes: dict[str, int] = field(default_factory=dict)


def summarise(proxy: str, fault: str, load: Load, t_fault: float, t_heal: float, faulted: str,
              instances: list[Instance], t_healed: float = 0.0) -> Row:
    s = load.samples
    row = Row(proxy, fault, requests=len(s))
    row.idem_failed = sum(1 for x in s if x.method != "POST" and x.outcome != "200")
    row.post_failed = sum(1 for x in s if x.method == "POST" and x.outcome != "200")
    row.slow = sum(1 for x in s if x.latency > 1.0)
    row.p99_before = p99([x.latency for x in s if x.t < t_fault])
    row.p99_during = p99([x.latency for x in s if t_fault <= x.t < t_heal])
    t_healed = max(t_healed, t_heal)
    back = [x.t for x in s if x.t >= t_healed and x.backend == faulted and x.outcome == "200"]
    row.back_after = round(min(back) - t_healed, 2) if back and faulted else None
    row.outcomes = dict(Counter(x.outcome for x in s))
    ids: Counter[str] = Counter()
    for inst in instances:
        with contextlib.suppress(OSError):
            ids.update(set(inst.seen()))
    row.post_twice = sum(1 for _, n in ids.items() if n > 1)
    return row


# --------------------------------------------------------------------------- the proxies


class Proxy:
    """One proxy in front of the three instances, started for one row."""

    def __init__(self, kind: str, instances: list[Instance], tmp: Path, flags: list[str]) -> None:
        self.kind, self.instances, self.tmp, self.flags = kind, instances, tmp, flags
        self.port = free_port()
        self.ui = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"{kind}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/svc"

    def argv(self) -> list[str]:
        addrs = [f"127.0.0.1:{i.port}" for i in self.instances]
        if self.kind == "router":
            routes = "\n".join(f"route add svc /svc http://{a}/" for a in addrs)
            return [sys.executable, "-m", "router", "-proxy.addr", f"127.0.0.1:{self.port}", "-ui.addr",
                    f"127.0.0.1:{self.ui}", "-registry.backend", "static", "-registry.static.routes", routes,
                    "-proxy.workers", "1", *self.flags]
        if self.kind == "nginx":
            conf = self.tmp / "nginx.conf"
            servers = "\n".join(f"server {a} max_fails=1 fail_timeout=5s;" for a in addrs)
            conf.write_text(f"""
daemon off; worker_processes 1; pid {self.tmp}/nginx.pid; error_log {self.tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream svc {{ {servers} keepalive 32; }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://svc; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_connect_timeout 1s; proxy_read_timeout 60s;
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 3;
    }}
  }}
}}
""")
            return [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(self.tmp)]
        if self.kind == "caddy":
            conf = self.tmp / "Caddyfile"
            conf.write_text(f"""{{
  admin off
  auto_https off
}}
http://127.0.0.1:{self.port} {{
  reverse_proxy {' '.join(addrs)} {{
    lb_policy least_conn
    lb_try_duration 2s
    lb_try_interval 50ms
    fail_duration 5s
    max_fails 1
    unhealthy_status 5xx
    transport http {{
      dial_timeout 1s
    }}
  }}
}}
""")
            return [find_tool("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]
        if self.kind == "traefik":
            dyn = self.tmp / "traefik.yml"
            servers = "".join(f"\n          - url: http://{a}/" for a in addrs)
            dyn.write_text(f"""http:
  routers:
    svc:
      rule: PathPrefix(`/svc`)
      service: svc
      middlewares: [retry]
  middlewares:
    retry:
      retry:
        attempts: 3
        initialInterval: 10ms
  services:
    svc:
      loadBalancer:
        servers:{servers}
        healthCheck:
          path: /__health
          interval: 1s
          timeout: 500ms
""")
            return [find_tool("traefik"), f"--entrypoints.web.address=127.0.0.1:{self.port}",
                    f"--providers.file.filename={dyn}", "--log.level=ERROR"]
        raise ValueError(self.kind)

    def start(self) -> Proxy:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http(self.url, timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not come up: {self.log.read_text()[-2000:]}")

    def metric(self, name: str) -> float | None:
        if self.kind != "router":
            return None
        text = http(f"http://127.0.0.1:{self.ui}/metrics").decode()
        m = re.search(rf"^consul_router_{name}(?:_total)? (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def find_tool(name: str) -> str:
    venv_bin = Path(os.environ.get("VENV", REPO / ".venv")) / "bin" / name
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (bench/tools.sh installs it)")
    return found


def available(kind: str) -> bool:
    if kind == "router":
        return True
    try:
        return bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) if kind == "nginx" else bool(find_tool(kind))
    except RuntimeError:
        return False


# --------------------------------------------------------------------------- one row


def fault(inst: Instance, kind: str) -> None:
    if kind == "killed":
        inst.kill()
    elif kind == "blackholed":
        inst.kill()
        inst.blackhole()
    else:
        inst.mode({"stalled": "stall", "body-stalled": "nobody", "slow": "slow", "failing": "fail", "reset": "reset"}[kind])


def heal(inst: Instance, kind: str) -> None:
    if kind in ("killed", "blackholed"):
        inst.unhole()
        inst.start()
    else:
        inst.mode("ok")


def run_row(proxy_kind: str, kind: str, *, rate: float, baseline: float, during: float, after: float,
            flags: list[str], tmp: Path, timeout: float = 2.0) -> Row:
    instances = [Instance(f"i{k}").start() for k in range(3)]
    proxy = Proxy(proxy_kind, instances, tmp, flags).start()
    try:
        for _ in range(20):  # warm: every proxy has seen every instance answer
            http(proxy.url)
        load = Load(proxy.url, rate=rate, timeout=timeout).start()
        time.sleep(baseline)
        t_fault = load.now()
        every = kind.startswith("all-")
        what = kind[4:] if every else kind
        bad = instances if every else instances[:1]
        for inst in bad:
            fault(inst, what)
        time.sleep(during)
        t_heal = load.now()
        for inst in bad:
            heal(inst, what)
        t_healed = load.now()  # a restarted instance answers from here on: "back after" counts from it
        time.sleep(after)
        load.stop()
        row = summarise(proxy_kind, kind, load, t_fault, t_heal, "" if every else bad[0].name, instances, t_healed)
        row.retries = proxy.metric("upstream_retries")
        row.hedges = proxy.metric("upstream_hedges")
        row.stalls = proxy.metric("upstream_stalls")
        return row
    finally:
        proxy.stop()
        for inst in instances:
            inst.stop()


# --------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    out = ["| proxy | fault | requests | idempotent failed | slower than 1 s | p99 before / during (ms) | "
           "POST failed | POST at two instances | back after heal (s) | retries / hedges |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rh = "" if r.retries is None else f"{r.retries:.0f} / {r.hedges or 0:.0f}"
        back = "–" if r.back_after is None else f"{r.back_after:.1f}"
        out.append(f"| {r.proxy} | {r.fault} | {r.requests} | {r.idem_failed} | {r.slow} | "
                   f"{r.p99_before * 1000:.0f} / {r.p99_during * 1000:.0f} | {r.post_failed} | {r.post_twice} | "
                   f"{back} | {rh} |")
    return "\n".join(out)


def write_out(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + MARK_START + "\n" + block + "\n" + MARK_END + tail
    else:
        text = text.rstrip() + "\n\n## Fault matrix (issue 17)\n\n" + MARK_START + "\n" + block + "\n" + MARK_END + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--proxies", default=",".join(PROXIES))
    p.add_argument("--rate", type=float, default=200.0, help="requests per second, all 16 clients together")
    p.add_argument("--baseline", type=float, default=3.0)
    p.add_argument("--fault", type=float, default=10.0, help="seconds the instance stays faulted")
    p.add_argument("--heal", type=float, default=5.0, help="seconds of load after healing")
    p.add_argument("--router-flags", default="", help="extra flags for our router (default: none, as shipped)")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rows: list[Row] = []
    skipped = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for kind in a.proxies.split(","):
            if not available(kind):
                skipped.append(kind)
                continue
            for row_kind in a.rows.split(","):
                row = run_row(kind, row_kind, rate=a.rate, baseline=a.baseline, during=a.fault, after=a.heal,
                              flags=a.router_flags.split(), tmp=Path(tmp))
                print(f"{row.proxy:8} {row.fault:12} {row.requests} requests, {row.idem_failed} idempotent failed, "
                      f"{row.slow} > 1 s, p99 {row.p99_before * 1000:.0f}/{row.p99_during * 1000:.0f} ms, "
                      f"POST failed {row.post_failed}, twice {row.post_twice}, back {row.back_after}, "
                      f"retries {row.retries} hedges {row.hedges}; {row.outcomes}", flush=True)
                rows.append(row)
    block = table(rows)
    cmd = "python bench/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    block = (f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
             f"{os.cpu_count()} cores shared with other work (timings are noisy; counts are what matter), "
             f"`{cmd.strip()}`: {a.rate:.0f} requests/s from 16 keep-alive clients with a 2 s timeout, every 10th "
             f"a POST; one instance of 3 faulted for {a.fault:.0f} s after {a.baseline:.0f} s, then healed and "
             f"{a.heal:.0f} s more." + (f" Not installed, skipped: {', '.join(skipped)}." if skipped else "")
             + "\n\n" + block)
    print(block)
    if a.out:
        write_out(a.out, block)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "backend":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
