"""HTTPS, TLS handshakes, HTTP/2 and gRPC: the router side by side with Traefik, same run, one worker each.

    .venv/bin/python bench/tls_bench.py [--duration 5] [--rounds 3] [--targets router,traefik] [--out FILE]

Both proxies get the same trustme certificate (made here, at run time) on a TLS listener and proxy to the
same backends: http_bench.py's nginx (`GET /bench`, 19 bytes) for HTTP, a grpcio (asyncio) server in its
own process for gRPC (h2c upstream: the router's `grpc://` route, Traefik's `h2c://` server). Per round,
targets interleaved in an order rotated each round, it measures with clients nobody here wrote:

- HTTPS keep-alive: `wrk -t1 -c50` (HTTP/1.1 over TLS, connections kept);
- new TLS 1.3 handshakes per second: `openssl s_time -new` (full handshakes, no request), beside
  `s_time -reuse` (resumed) and `wrk -t1 -c10 -H 'Connection: close'` (a new connection per request; wrk
  resumes its TLS session, so this is mostly resumed handshakes, as the servers' session counters show);
- HTTP/2: `h2load -c10 -m10` (10 connections x 10 streams, ALPN h2);
- gRPC unary calls/s: the same grpcio client for both (one channel, `--grpc-concurrency` calls in flight).

Ratios are router/Traefik per round, median over rounds (http_bench.paired_ratio). Loopback only; the
machine is shared, so only ratios within one run mean anything. Run `bench/tools.sh` first.

Past 400 lines on purpose: both proxies' configuration, the gRPC server and client processes this module
runs as (`bench/tls_bench.py --grpc-server PORT`, `--grpc-client`), the measures and the report are read together to check one
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import (  # noqa: E402
    BENCH_BODY,
    Procs,
    backend_nginx_conf,
    command_output,
    find_tool,
    free_port,
    git_describe,
    log,
    machine_info,
    paired_ratio,
    rotated,
    router_version,
    tree_pids,
    tree_rss_mb,
    wait_ready,
    write_block,
)
from bench.tcp_bench import cpu_seconds  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAME = "bench.example.com"
GRPC_SERVICE, GRPC_METHOD = "bench.Echo", "Unary"
GRPC_PAYLOAD = b"x" * 16
MARKS = ("<!-- edge-bench:start -->", "<!-- edge-bench:end -->")
S_TIME_PROCS = 4  # s_time is sequential: several at once keep the proxy busy rather than waiting
METRICS = (  # key, label, unit
    ("http", "plain HTTP keep-alive, for scale (wrk -t1 -c50)", "req/s"),
    ("https", "HTTPS keep-alive (wrk -t1 -c50)", "req/s"),
    ("handshakes", "new TLS connections, one request each (wrk -t1 -c10, Connection: close; wrk resumes its "
                   "session, so these are resumed TLS 1.3 handshakes)", "conn/s"),
    ("s_time", f"full TLS 1.3 handshakes, no request ({S_TIME_PROCS} x openssl s_time -new at once)", "conn/s"),
    ("resumed", f"resumed TLS 1.3 handshakes, no request ({S_TIME_PROCS} x openssl s_time -reuse at once)", "conn/s"),
    ("h2", "HTTP/2 (h2load -c10 -m10)", "req/s"),
    ("grpc", "gRPC unary over TLS (grpcio, 1 channel)", "calls/s"),
)
# issue 16: "new TLS 1.3 handshakes per second >= 0.8x": the full handshakes of `openssl s_time -new` (wrk's
# Connection: close row resumes its sessions and adds a request, so it is shown beside it, not as the goal)
GOALS = {"https": 1.0, "s_time": 0.8, "h2": 0.8, "grpc": 0.8}


# --------------------------------------------------------------------------- helper processes


def grpc_server_main(port: int) -> None:
    """The gRPC backend: grpcio's asyncio server, one generic unary method that echoes its bytes."""
    import grpc

    async def echo(req: bytes, ctx: object) -> bytes:
        return req

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            GRPC_SERVICE, {GRPC_METHOD: grpc.unary_unary_rpc_method_handler(echo)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def grpc_client_main(target: str, ca: str, seconds: float, concurrency: int) -> None:
    """The gRPC load: `concurrency` callers on one TLS channel for `seconds`; prints calls, failures."""
    import grpc

    async def run() -> None:
        creds = grpc.ssl_channel_credentials(Path(ca).read_bytes())
        async with grpc.aio.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", NAME)]) as ch:
            call = ch.unary_unary(f"/{GRPC_SERVICE}/{GRPC_METHOD}")
            await call(GRPC_PAYLOAD, timeout=10)  # connected and routed before the clock starts
            done = failed = 0
            end = time.monotonic() + seconds

            async def caller() -> None:
                nonlocal done, failed
                while time.monotonic() < end:
                    try:
                        if await call(GRPC_PAYLOAD, timeout=10) == GRPC_PAYLOAD:
                            done += 1
                        else:
                            failed += 1
                    except grpc.aio.AioRpcError:
                        failed += 1
            t0 = time.monotonic()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            print(f"calls={done} failed={failed} seconds={time.monotonic() - t0:.3f}")

    asyncio.run(run())


# --------------------------------------------------------------------------- targets


def traefik_conf(tmp: Path, web: int, grpc_port: int) -> Path:
    """Traefik's file provider: the certificate as the default one, /bench to nginx, the gRPC service
    to the h2c backend; both on the TLS entrypoint `websecure`."""
    dyn = tmp / "traefik-tls.yml"
    dyn.write_text(f"""tls:
  stores:
    default:
      defaultCertificate:
        certFile: {tmp / 'cert.pem'}
        keyFile: {tmp / 'key.pem'}
http:
  routers:
    bench:
      rule: "PathPrefix(`/bench`)"
      service: web
      entryPoints: [websecure]
      tls: {{}}
    plain:
      rule: "PathPrefix(`/bench`)"
      service: web
      entryPoints: [web]
    grpc:
      rule: "PathPrefix(`/{GRPC_SERVICE}/`)"
      service: grpc
      entryPoints: [websecure]
      tls: {{}}
  services:
    web:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:{web}"}}]
    grpc:
      loadBalancer:
        servers: [{{url: "h2c://127.0.0.1:{grpc_port}"}}]
""")
    return dyn


def work_dir(prefix: str) -> Path:
    """A temporary folder the proxies' processes (nginx may run as another user) can read."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)
    return tmp


def certs_and_backend(procs: Procs, tmp: Path) -> int:
    """A trustme CA and a certificate for NAME and 127.0.0.1 in `tmp` (cert.pem, key.pem, ca.pem), and the
    backend nginx serving /bench, started and answering: its port."""
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME, "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    web = free_port()
    (tmp / "files").mkdir()
    (tmp / "backend.conf").write_text(backend_nginx_conf(tmp, web))
    be = procs.start("backend", [find_tool("nginx") or "nginx", "-p", str(tmp), "-e", str(tmp / "backend-error.log"),
                                 "-c", str(tmp / "backend.conf")], tmp)
    wait_ready(f"http://127.0.0.1:{web}/bench", be, 15, expect=BENCH_BODY)
    return web


def remove_work_dir(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()


def start_targets(names: list[str], procs: Procs, tmp: Path, web: int, grpc_port: int,
                  ready: float, base: Path | None = None, prefix: list[str] | None = None,
                  extra_env: dict[str, str] | None = None) -> dict[str, dict]:
    """Each target's TLS port, pid and version; a target that fails to start is left out with its error.
    `prefix`: arguments before the router's `-m router` (bench/tls_churn.py's probe); `extra_env`: added to its
    environment."""
    out: dict[str, dict] = {}
    for name in names:
        port, plain = free_port(), free_port()
        if name in ("router", "base"):
            src = REPO if name == "router" else base
            if src is None:
                raise SystemExit("target base needs --base DIR (a checkout of the router to compare with)")
            routes = (f"route add bench /bench http://127.0.0.1:{web}/\n"
                      f'route add grpc /{GRPC_SERVICE}/ grpc://127.0.0.1:{grpc_port} opts "proto=grpc"')
            argv = [sys.executable, *(prefix or []), "-m", "router", "-registry.backend", "static", "-registry.static.routes", routes,
                    "-proxy.addr", f"127.0.0.1:{plain},127.0.0.1:{port};cs=bench",
                    "-proxy.cs", f"cs=bench;type=file;cert={tmp / 'cert.pem'};key={tmp / 'key.pem'}",
                    "-ui.addr", f"127.0.0.1:{free_port()}", "-proxy.workers", "1",
                    "-registry.consul.register.enabled", "false"]
            version = f"{router_version(src)} ({git_describe(src) or src})"
            env = {**(extra_env or {}), "PYTHONPATH": str(src)}
        elif name == "traefik":
            traefik = find_tool("traefik", True)
            if not traefik:
                raise SystemExit("traefik not found: run bench/tools.sh")
            argv = [traefik, f"--entrypoints.websecure.address=127.0.0.1:{port}",
                    f"--entrypoints.web.address=127.0.0.1:{plain}",
                    f"--providers.file.filename={traefik_conf(tmp, web, grpc_port)}", "--log.level=ERROR",
                    "--global.checknewversion=false", "--global.sendanonymoususage=false"]
            version = command_output([traefik, "version"]).split(":", 1)[-1].strip()
            env = {"GOMAXPROCS": "1"}
        else:
            raise SystemExit(f"unknown target {name}")
        proc = procs.start(name, argv, tmp, env=env, cwd=src if name == "base" else REPO)
        try:
            wait_https(f"https://127.0.0.1:{port}/bench", proc, ready)
        except RuntimeError as exc:
            log(f"{name}: FAILED {exc}; see {tmp}/{name}.log")
            procs.stop(proc)
            continue
        out[name] = {"port": port, "plain": plain, "pid": proc.pid, "version": version, "rss_idle": tree_rss_mb(proc.pid),
                     "tls": tls_version(port)}
        log(f"{name}: up on :{port} ({out[name]['tls']})")
    return out


def wait_https(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import ssl
    import urllib.request
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                if resp.status == 200 and resp.read().decode() == BENCH_BODY:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f}s: {last}")


def tls_version(port: int) -> str:
    """What `openssl s_client` negotiates: protocol version and cipher suite."""
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME, "-brief"],
                         input="", capture_output=True, text=True, timeout=20)
    text = res.stdout + res.stderr
    ver = re.search(r"Protocol version: (\S+)", text)
    cipher = re.search(r"Ciphersuite: (\S+)", text)
    return f"{ver.group(1) if ver else '?'} {cipher.group(1) if cipher else '?'}"


# --------------------------------------------------------------------------- clients


def wrk(url: str, seconds: float, connections: int, *extra: str) -> tuple[float, int]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", *extra, url], capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = sum(int(g) for g in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not rps:
        raise RuntimeError(f"wrk: {out[-300:]}")
    return float(rps.group(1)), errors + (int(non2xx.group(1)) if non2xx else 0)


def h2load(url: str, seconds: float) -> tuple[float, int]:
    out = subprocess.run(["h2load", "-c10", "-m10", "-t1", f"-D{seconds:g}", "--warm-up-time=1", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not (rate and req):
        raise RuntimeError(f"h2load: {out[-300:]}")
    # errors: answers that were not 2xx; h2load's "failed" also counts the requests in flight when -D ends
    bad = max(0, int(req.group(4)) - int(status.group(1))) if status else 0
    return float(rate.group(1)), bad


def s_time(port: int, seconds: float, mode: str = "-new") -> tuple[float, int]:
    """Sequential handshakes, `-new` full ones, `-reuse` resuming the first connection's session."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode, "-time", f"{int(seconds)}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(S_TIME_PROCS)]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    wall = time.monotonic() - t0  # s_time's own "in N real seconds" is rounded to whole seconds
    total = 0
    for out in outs:
        m = re.findall(r"(\d+) connections in \d+ real seconds", out)
        if not m:
            raise RuntimeError(f"s_time: {out[-300:]}")
        total += int(m[-1])
    return total / wall, 0


def grpc_calls(port: int, ca: Path, seconds: float, concurrency: int) -> tuple[float, int]:
    out = subprocess.run([sys.executable, __file__, "--grpc-client", f"127.0.0.1:{port}", "--ca", str(ca),
                          "--duration", str(seconds), "--grpc-concurrency", str(concurrency)],
                         capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"calls=(\d+) failed=(\d+) seconds=([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"grpc client: {out.stderr[-300:]}")
    return int(m.group(1)) / float(m.group(3)), int(m.group(2))


def measure(key: str, target: dict, tmp: Path, args: argparse.Namespace) -> tuple[float, int]:
    port = target["port"]
    url = f"https://127.0.0.1:{port}/bench"
    if key == "http":
        return wrk(f"http://127.0.0.1:{target['plain']}/bench", args.duration, 50)
    if key == "https":
        return wrk(url, args.duration, 50)
    if key == "handshakes":
        return wrk(url, args.duration, 10, "-H", "Connection: close")
    if key == "s_time":
        return s_time(port, args.duration)
    if key == "resumed":
        return s_time(port, args.duration, "-reuse")
    if key == "h2":
        return h2load(url, args.duration)
    if key == "grpc":
        return grpc_calls(port, tmp / "ca.pem", args.duration, args.grpc_concurrency)
    raise ValueError(key)


# --------------------------------------------------------------------------- report


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def render(results: dict[str, dict[str, list[float]]], errors: dict[str, dict[str, int]],
           cpu_us: dict[str, dict[str, list[float]]], targets: dict[str, dict],
           args: argparse.Namespace, command: str, loads: list[str], keys: list[str]) -> str:
    names = list(targets)
    head = "| measure | " + " | ".join(f"{n} (median; per round)" for n in names)
    lines = [MARKS[0], "## Edge: HTTPS, TLS handshakes, HTTP/2, gRPC against Traefik (issue 16)", "",
             f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- machine: {machine_info()}; shared with other sessions, load average (1/5/15 min) at the start of "
             f"each round: {'; '.join(loads)}",
             f"- command: `{command}`",
             f"- {args.rounds} rounds of {args.duration:g} s per measure, targets interleaved in an order rotated "
             "each round; one worker each (router `-proxy.workers 1`, Traefik `GOMAXPROCS=1`); a trustme ECDSA "
             "certificate made at run time; backends: one nginx worker (`/bench`, 19 bytes), a grpcio asyncio "
             f"server (h2c), gRPC client: grpcio asyncio, one TLS channel, {args.grpc_concurrency} calls in flight",
             "- negotiated (openssl s_client): " + "; ".join(f"{n} {t['tls']}" for n, t in targets.items()),
             "- versions: " + "; ".join(f"{n} {t['version']}" for n, t in targets.items())
             + f"; {command_output(['wrk', '-v'])}; {command_output(['h2load', '--version'])}; "
             f"{command_output(['openssl', 'version'])}; grpcio {grpc_version()}",
             "", head + (" | router/traefik (goal) |" if "router" in names and "traefik" in names else " |"),
             "|---|" + "---|" * len(names) + ("---:|" if "router" in names and "traefik" in names else "")]
    for key, label, unit in METRICS:
        if key not in keys:
            continue
        row = f"| {label}, {unit} |"
        for n in names:
            vals = results[n][key]
            row += (f" {statistics.median(vals):.0f}; {' / '.join(f'{v:.0f}' for v in vals)}"
                    f"{f' ({errors[n][key]} errors)' if errors[n][key] else ''} |") if vals else " – |"
        if "router" in names and "traefik" in names:
            ratio = paired_ratio(results["router"][key], results["traefik"][key])
            goal = GOALS.get(key)
            verdict = "" if goal is None or ratio == "–" else (" met" if float(ratio) >= goal else " not met")
            row += f" {ratio}{f' (≥ {goal:g}{verdict})' if goal else ''} |"
        lines.append(row)
    both = "router" in names and "traefik" in names
    lines += ["", "The proxy's own CPU per operation (µs, user + system of its process tree over the run divided by "
              "the operations it served; less sensitive to the machine's load than the rates):", "",
              "| measure | " + " | ".join(names) + (" | router/traefik |" if both else " |"),
              "|---|" + "---:|" * (len(names) + both)]
    for key, label, _unit in METRICS:
        if key in keys:
            cells = [f"{statistics.median(cpu_us[n][key]):.0f}" if cpu_us[n][key] else "–" for n in names]
            ratio = f" {paired_ratio(cpu_us['router'][key], cpu_us['traefik'][key])} |" if both else ""
            lines.append(f"| {label} | " + " | ".join(cells) + " |" + ratio)
    lines += ["", "RSS (MB, process tree) idle → after the rounds: " + "; ".join(
        f"{n} {t['rss_idle']:.0f} → {t.get('rss_after', 0):.0f}" for n, t in targets.items()), "", MARKS[1]]
    return "\n".join(lines) + "\n"


def grpc_version() -> str:
    import grpc
    return grpc.__version__


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5, help="seconds per measure and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="router,traefik", help="router, traefik, base (the router from --base)")
    ap.add_argument("--base", type=Path, help="another checkout of the router, run as target `base` (before/after)")
    ap.add_argument("--measures", default=",".join(k for k, _, _ in METRICS))
    ap.add_argument("--grpc-concurrency", type=int, default=20)
    ap.add_argument("--ready-timeout", type=float, default=30)
    ap.add_argument("--out", type=Path, help="markdown file to write the results block into")
    ap.add_argument("--grpc-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--grpc-client", help=argparse.SUPPRESS)
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.grpc_server:
        grpc_server_main(args.grpc_server)
        return 0
    if args.grpc_client:
        grpc_client_main(args.grpc_client, args.ca, args.duration, args.grpc_concurrency)
        return 0
    command = shlex.join(["python", "bench/tls_bench.py", *sys.argv[1:]])
    keys = [k.strip() for k in args.measures.split(",") if k.strip()]
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = work_dir("tls-bench-")
    try:
        web = certs_and_backend(procs, tmp)
        grpc_port = free_port()
        procs.start("grpc-backend", [sys.executable, __file__, "--grpc-server", str(grpc_port)], tmp)
        targets = start_targets([t.strip() for t in args.targets.split(",")], procs, tmp, web, grpc_port,
                                args.ready_timeout, args.base)
        results = {n: {k: [] for k in keys} for n in targets}
        errors = {n: dict.fromkeys(keys, 0) for n in targets}
        cpu_us: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in targets}
        for t in targets.values():  # warm-up: connection pools, lazy imports, first paths
            for k in keys:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    measure(k, t, tmp, argparse.Namespace(**{**vars(args), "duration": 1}))
        loads = []
        for rnd in range(args.rounds):
            loads.append(load_average())
            for k in keys:
                for n in rotated(list(targets), rnd + keys.index(k)):
                    c0, t0 = tree_cpu(targets[n]["pid"]), time.monotonic()
                    try:
                        value, errs = measure(k, targets[n], tmp, args)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        log(f"round {rnd + 1} {n} {k}: {exc}")
                        continue
                    results[n][k].append(value)
                    errors[n][k] += errs
                    # CPU per operation: what the proxy spent, whatever share of the cores it was given
                    cpu_us[n][k].append((tree_cpu(targets[n]["pid"]) - c0) / (value * (time.monotonic() - t0)) * 1e6)
                    log(f"round {rnd + 1} {k:10} {n:8} {value:9.0f}  errors {errs}  {cpu_us[n][k][-1]:6.0f} µs CPU each "
                        f"(load {load_average()})")
        for t in targets.values():
            t["rss_after"] = tree_rss_mb(t["pid"])
        block = render(results, errors, cpu_us, targets, args, command, loads, keys)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        remove_work_dir(tmp)
    print(block)
    if args.out:
        write_block(args.out, block, MARKS)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
