"""CPU per proxied request: process CPU time (utime + stime, all threads) over the requests wrk completed.

Steadier than req/s on a shared machine, where another session's load moves throughput by 2-4x between
rounds: CPU time per request moves far less. One nginx worker serves a 19-byte answer; each target
proxies it with one worker/process; targets run interleaved, in an order rotated each round.

    python bench/cpu_per_request.py --rounds 3                       # this checkout and Traefik
    python bench/cpu_per_request.py --base ../other-checkout         # also an older checkout, side by side
    python bench/cpu_per_request.py --targets router,traefik,granian,hypercorn,uvicorn
    python bench/cpu_per_request.py --base a010=../a010c37 --base main=../main --download 200 --syscalls

`--download MB` measures streaming instead: each round downloads an MB-sized file (10**6 bytes) through
each target with curl, `--downloads` times, and reports CPU per MB and MB/s; `--syscalls` adds one more
download per target under `strace -c -f` and reports its system calls per MB (strace slows the process,
so its download is not timed). `--base` may be given several times, as NAME=PATH (or PATH: "base").

granian, hypercorn and uvicorn serve the same proxy core as an ASGI app (bench/asgi_app.py); install
them into the venv for the run (`pip install granian hypercorn`: bench-time only, not dependencies).
CPU time counts the target's whole process tree (granian and hypercorn run their worker as a child).
Needs nginx and wrk on PATH and traefik in the venv (bench/tools.sh installs them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BODY = "hello from backend"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def wait_answer(url: str, timeout: float = 30) -> None:
    """Until `url` answers 200 (Traefik listens before its file provider has loaded the route)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered 200")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# the proxy core under other servers, one worker each, uvloop where the server offers it
ASGI = {
    "granian": lambda port: ["--interface", "asgi", "--workers", "1", "--runtime-threads", "1", "--runtime-mode", "st",
                             "--loop", "uvloop", "--no-ws", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "error"],
    "hypercorn": lambda port: ["-w", "1", "-k", "uvloop", "-b", f"127.0.0.1:{port}", "--log-level", "error"],
    "uvicorn": lambda port: ["--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log",
                             "--log-level", "error", "--host", "127.0.0.1", "--port", str(port)],
}


def start(target: str, src: Path, port: int, backend: int, tmp: Path) -> subprocess.Popen[bytes]:
    if target == "traefik":
        dyn = tmp / "traefik.yml"
        dyn.write_text(f'http:\n  routers:\n    web: {{rule: "PathPrefix(`/`)", service: web, entryPoints: [web]}}\n'
                       f'  services:\n    web:\n      loadBalancer:\n        servers: [{{url: "http://127.0.0.1:{backend}"}}]\n')
        argv = [str(Path(sys.executable).parent / "traefik"), f"--entrypoints.web.address=127.0.0.1:{port}",
                f"--providers.file.filename={dyn}", "--log.level=ERROR", "--global.checknewversion=false",
                "--global.sendanonymoususage=false"]
        env = {**os.environ, "GOMAXPROCS": "1"}
    elif target in ASGI:
        argv = [str(Path(sys.executable).parent / target), *ASGI[target](port), "bench.asgi_app:app"]
        env = {**os.environ, "PYTHONPATH": str(src), "BENCH_BACKEND": f"http://127.0.0.1:{backend}"}
    else:
        routes = f"route add b /bench http://127.0.0.1:{backend}/\nroute add b /big http://127.0.0.1:{backend}/"
        argv = [sys.executable, "-m", "router", "-registry.backend", "static", "-registry.static.routes",
                routes, "-proxy.addr", f"127.0.0.1:{port}",
                "-ui.addr", f"127.0.0.1:{free_port()}", "-proxy.workers", "1", "-registry.consul.register.enabled",
                "false"]
        env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(argv, env=env, cwd=src, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    wait_answer(f"http://127.0.0.1:{port}/bench")
    return proc


def measure(target: str, src: Path, backend: int, tmp: Path, seconds: float) -> tuple[float, float]:
    """(µs of CPU per request, req/s) for one target."""
    port = free_port()
    proc = start(target, src, port, backend, tmp)
    try:
        url = f"http://127.0.0.1:{port}/bench"
        subprocess.run(["wrk", "-t1", "-c50", "-d1s", url], capture_output=True, check=True)  # warm-up
        before = cpu_seconds(proc.pid)
        out = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds:g}s", url], capture_output=True, text=True,
                             check=True).stdout
        used = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(10)
    if "Non-2xx" in out:
        raise RuntimeError(f"{target}: non-2xx answers:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return used / requests * 1e6, rps


def curl_download(url: str, size: int) -> float:
    """Seconds curl took to fetch `url` to /dev/null; checks the status and every byte."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "200" or int(out[1]) != size:
        raise RuntimeError(f"{url}: status {out[0]}, {out[1]} of {size} bytes")
    return float(out[2])


def strace_calls(pid: int, url: str, size: int) -> tuple[int, str]:
    """System calls of `pid` (all threads) during one download, and the five most frequent."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as f:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", f.name, "-p", str(pid)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached to every thread
        curl_download(url, size)
        tracer.terminate()
        tracer.wait(10)
        rows = [line.split() for line in f.read().splitlines()]
    counts = {r[-1]: int(r[3]) for r in rows if len(r) >= 5 and r[3].isdigit() and r[-1] != "total"}
    top = ", ".join(f"{n} {c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    return sum(counts.values()), top


def measure_download(target: str, src: Path, backend: int, tmp: Path, mb: int, times: int,
                     syscalls: bool) -> tuple[float, float, str]:
    """(ms of CPU per MB, median MB/s, syscalls per MB or "") for one target over `times` downloads."""
    port = free_port()
    proc = start(target, src, port, backend, tmp)
    size = mb * 1000 * 1000
    try:
        url = f"http://127.0.0.1:{port}/big/big.bin"
        curl_download(url, size)  # warm-up
        before = cpu_seconds(proc.pid)
        took = [curl_download(url, size) for _ in range(times)]
        used = cpu_seconds(proc.pid) - before
        calls = ""
        if syscalls:
            n, top = strace_calls(proc.pid, url, size)
            calls = f"{n / mb:.0f} syscalls/MB ({top})"
    finally:
        proc.terminate()
        proc.wait(10)
    return used / (times * mb) * 1e3, sorted(mb / t for t in took)[times // 2], calls


def summary(results: dict[str, list[tuple[float, float]]],
            header: str = "median µs/request   median req/s   µs/request", rel: int = 0,
            widths: tuple[str, str] = ("12.1f", "16.0f")) -> None:
    """Medians of both figures of each round, and each target's figure `rel` (0 or 1) relative to Traefik's
    in the same round."""
    print(f"\ntarget     {header} relative to traefik (per round)")
    ref = results.get("traefik")
    for name, rows in results.items():
        a = sorted(r[0] for r in rows)[len(rows) // 2]
        b = sorted(r[1] for r in rows)[len(rows) // 2]
        ratios = " / ".join(f"{x[rel] / y[rel]:.2f}" for x, y in zip(rows, ref, strict=True)) \
            if ref and name != "traefik" else ""
        print(f"{name:9s} {a:{widths[0]}} {b:{widths[1]}}   {ratios}")


def download_rounds(args: argparse.Namespace, names: list[str], targets: dict[str, Path], backend: int,
                    tmp: Path) -> None:
    if args.syscalls and not shutil.which("strace"):
        raise SystemExit("--syscalls needs strace")
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            ms, mbps, calls = measure_download(name, targets[name], backend, tmp, args.download, args.downloads,
                                               args.syscalls and r == 0)
            results[name].append((ms, mbps))
            print(f"round {r + 1} {name:9s} {ms:6.3f} ms CPU per MB  {mbps:7.0f} MB/s  {calls}", flush=True)
    summary(results, "median ms CPU/MB   median MB/s   MB/s", rel=1, widths=("12.3f", "14.0f"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--base", action="append", default=[],
                   help="another checkout of the router, as NAME=PATH or PATH ('base'); repeatable")
    p.add_argument("--download", type=int, default=0, metavar="MB",
                   help="measure CPU per MB of an MB-sized download instead of CPU per request")
    p.add_argument("--downloads", type=int, default=3, help="downloads per target per round (--download)")
    p.add_argument("--syscalls", action="store_true", help="with --download: syscalls per MB under strace")
    p.add_argument("--no-traefik", action="store_true")
    p.add_argument("--targets", default="router,traefik",
                   help="comma-separated: router, traefik, " + ", ".join(ASGI) + " (base: with --base)")
    args = p.parse_args()
    names = [n for n in args.targets.split(",") if n and not (n == "traefik" and args.no_traefik)]
    bases = dict(b.split("=", 1) if "=" in b else ("base", b) for b in args.base)
    for i, n in enumerate(bases):
        if n not in names:
            names.insert(1 + i, n)
    targets = {n: Path(bases[n]).resolve() if n in bases else REPO for n in names}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        backend = free_port()
        (tmp / "nginx.conf").write_text(
            f"worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};"
            f" uwsgi_temp_path {tmp}; scgi_temp_path {tmp}; keepalive_requests 1000000;\n"
            f"  server {{ listen 127.0.0.1:{backend};"
            f' location = /bench {{ default_type text/plain; return 200 "{BODY}\\n"; }}'
            f" location /big/ {{ alias {tmp}/files/; }} }} }}\n")
        if args.download:
            (tmp / "files").mkdir()
            block = os.urandom(1 << 20)
            with open(tmp / "files" / "big.bin", "wb") as fh:
                for _ in range(args.download):
                    fh.write(block[:1000 * 1000])
        nginx = subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf")], stderr=subprocess.DEVNULL)
        try:
            wait_port(backend)
            names = list(targets)
            results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
            if args.download:
                download_rounds(args, names, targets, backend, tmp)
                return 0
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    us, rps = measure(name, targets[name], backend, tmp, args.duration)
                    results[name].append((us, rps))
                    print(f"round {r + 1} {name:9s} {us:7.1f} µs CPU per request  {rps:8.0f} req/s", flush=True)
            summary(results)
        finally:
            nginx.terminate()
            nginx.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
