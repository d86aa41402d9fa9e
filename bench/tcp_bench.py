"""TCP through a `proto=tcp` route, side by side with Traefik's TCP router: bytes per second, and RSS over
idle connections.

    .venv/bin/python bench/tcp_bench.py [--duration 5] [--rounds 3] [--idle 1000] [--out FILE]

Throughput: iperf3 (Debian's, a C client that can push far more than the proxies on this machine;
`-Z` sends with sendfile) to an `iperf3 -s`, straight (`direct`), through the router (one process, a
static `route add iperf :PORT tcp://127.0.0.1:IPERF`) and through Traefik (`GOMAXPROCS=1`, a TCP router
`HostSNI(*)`), interleaved in an order rotated each round; the router's CPU seconds per GB moved are
read from /proc meanwhile. Idle connections: `--idle` connections opened through each proxy to a sink
that never writes, RSS of the proxy read before, 1 s after, again `--idle-hold` s later, and after they
close. Loopback only; the machine is shared: compare within one run. Run `bench/tools.sh` first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import (  # noqa: E402
    Procs,
    command_output,
    find_tool,
    free_port,
    git_describe,
    log,
    machine_info,
    paired_ratio,
    rotated,
    router_version,
    write_block,
)
from tests.router_proc import wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MARKS = ("<!-- tcp-bench:start -->", "<!-- tcp-bench:end -->")


def sink_main(port: int) -> None:
    """The idle connections' far end, in its own process: accepts and reads, never writes."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(4096)

    def one(c: socket.socket) -> None:
        with c:
            while c.recv(65536):
                pass

    while True:
        c, _ = srv.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def traefik_conf(tmp: Path, iperf: int, sink: int) -> Path:
    dyn = tmp / "traefik-tcp.yml"
    dyn.write_text(f"""tcp:
  routers:
    iperf:
      rule: "HostSNI(`*`)"
      service: iperf
      entryPoints: [iperf]
    sink:
      rule: "HostSNI(`*`)"
      service: sink
      entryPoints: [sink]
  services:
    iperf:
      loadBalancer:
        servers: [{{address: "127.0.0.1:{iperf}"}}]
    sink:
      loadBalancer:
        servers: [{{address: "127.0.0.1:{sink}"}}]
""")
    return dyn


def start_targets(names: list[str], procs: Procs, tmp: Path, iperf: int, sink: int) -> dict[str, dict]:
    out: dict[str, dict] = {"direct": {"port": iperf, "sink": sink, "pid": None, "version": "no proxy"}}
    for name in names:
        port, sport = free_port(), free_port()
        if name == "router":
            routes = f"route add iperf :{port} tcp://127.0.0.1:{iperf}\nroute add sink :{sport} tcp://127.0.0.1:{sink}"
            argv = [sys.executable, "-m", "router", "-proxy.addr",
                    f"127.0.0.1:{port};proto=tcp,127.0.0.1:{sport};proto=tcp", "-ui.addr", f"127.0.0.1:{free_port()}",
                    "-proxy.workers", "1", "-registry.backend", "static", "-registry.static.routes", routes,
                    "-registry.consul.register.enabled", "false"]
            env, version = {"PYTHONPATH": str(ROOT)}, f"{router_version(ROOT)} ({git_describe(ROOT)})"
        elif name == "traefik":
            traefik = find_tool("traefik", True)
            if not traefik:
                raise SystemExit("traefik not found: run bench/tools.sh")
            argv = [traefik, f"--entrypoints.iperf.address=127.0.0.1:{port}",
                    f"--entrypoints.sink.address=127.0.0.1:{sport}",
                    f"--providers.file.filename={traefik_conf(tmp, iperf, sink)}", "--log.level=ERROR",
                    "--global.checknewversion=false", "--global.sendanonymoususage=false"]
            env = {"GOMAXPROCS": "1"}
            version = command_output([traefik, "version"]).split(":", 1)[-1].strip()
        else:
            raise SystemExit(f"unknown target {name}")
        proc = procs.start(name, argv, tmp, env=env, cwd=ROOT)
        try:
            wait_port(port, proc)
            wait_port(sport, proc)
            time.sleep(1.0)  # Traefik listens before its file provider has loaded the routers
        except RuntimeError as exc:
            log(f"{name}: FAILED {exc}; see {tmp}/{name}.log")
            procs.stop(proc)
            continue
        out[name] = {"port": port, "sink": sport, "pid": proc.pid, "version": version}
        log(f"{name}: up on :{port} (idle connections through :{sport})")
    return out


def iperf3(port: int, seconds: float) -> float:
    """GB/s received by the server (1 stream, sendfile on the client)."""
    res = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{seconds:g}", "-Z", "-J"],
                         capture_output=True, text=True, timeout=seconds + 60)
    try:
        data = json.loads(res.stdout)
        return data["end"]["sum_received"]["bytes"] / data["end"]["sum_received"]["seconds"] / 1e9
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3: {res.stdout[-300:]} {res.stderr[-300:]}") from exc


def idle_rss(pid: int, port: int, n: int, hold: float) -> tuple[float, float, float, float]:
    """RSS before, 1 s after `n` idle connections through `port` are open (the proxy holds both sides of
    each: 2n more descriptors), `hold` s later, and after they closed."""
    before, fds = rss_mib(pid), fd_count(pid)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    deadline = time.monotonic() + 60
    while fd_count(pid) < fds + 2 * n and time.monotonic() < deadline:  # every upstream side dialled
        time.sleep(0.1)
    time.sleep(1.0)
    opened = rss_mib(pid)
    time.sleep(hold)
    held = rss_mib(pid)
    for c in conns:
        c.close()
    time.sleep(1.0)
    return before, opened, held, rss_mib(pid)


def render(targets: dict, gbps: dict, cpu: dict, idle: dict, args: argparse.Namespace, command: str,
           loads: list[str]) -> str:
    names = list(targets)
    lines = [MARKS[0], "## Edge: TCP through a `proto=tcp` route, against Traefik (issue 16)", "",
             f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- machine: {machine_info()}; shared with other sessions, load average at the start of each round: "
             f"{'; '.join(loads)}",
             f"- command: `{command}`",
             f"- throughput: `iperf3 -c 127.0.0.1 -p PORT -t {args.duration:g} -Z -J` (one stream, sendfile), bytes "
             f"the server received per second, {args.rounds} rounds, targets interleaved in rotated order; the router "
             "(`-proxy.workers 1`) splices in the kernel (router/listen/kernelsplice.py), Traefik `GOMAXPROCS=1`",
             "- versions: " + "; ".join(f"{n} {t['version']}" for n, t in targets.items() if n != "direct")
             + f"; {command_output(['iperf3', '--version'])}",
             "", "| target | GB/s (median; per round) | vs direct | router/traefik | CPU s per GB moved |",
             "|---|---|---:|---:|---:|"]
    for n in names:
        vals = gbps[n]
        if not vals:
            lines.append(f"| {n} | failed | | | |")
            continue
        vs = paired_ratio(vals, gbps["direct"]) if n != "direct" else "1.00"
        rt = paired_ratio(gbps["router"], gbps["traefik"]) if n == "router" and "traefik" in gbps else ""
        c = f"{statistics.median(cpu[n]):.2f}" if cpu.get(n) else "–"
        lines.append(f"| {n} | {statistics.median(vals):.2f}; {' / '.join(f'{v:.2f}' for v in vals)} | {vs} | {rt} | {c} |")
    if idle:
        lines += ["", f"RSS over {args.idle} idle TCP connections (MiB, the proxy process; both sides of each "
                  f"connection are the proxy's): before → 1 s after all are open (both sides) → {args.idle_hold:g} s later → after closing",
                  "", "| target | RSS MiB | per connection |", "|---|---|---:|"]
        for n, (b, o, h, a) in idle.items():
            lines.append(f"| {n} | {b:.1f} → {o:.1f} → {h:.1f} → {a:.1f} | {(h - b) * 1024 / args.idle:.1f} KiB |")
    lines += ["", MARKS[1]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5, help="seconds per iperf3 run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="router,traefik")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--idle-hold", type=float, default=10.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sink", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        sink_main(args.sink)
        return 0
    command = shlex.join(["python", "bench/tcp_bench.py", *sys.argv[1:]])
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="tcp-bench-"))
    try:
        iperf, sink = free_port(), free_port()
        srv = procs.start("iperf3", ["iperf3", "-s", "-p", str(iperf), "-B", "127.0.0.1"], tmp)
        sk = procs.start("sink", [sys.executable, __file__, "--sink", str(sink)], tmp)
        wait_port(iperf, srv)
        wait_port(sink, sk)
        targets = start_targets([t.strip() for t in args.targets.split(",")], procs, tmp, iperf, sink)
        gbps: dict[str, list[float]] = {n: [] for n in targets}
        cpu: dict[str, list[float]] = {n: [] for n in targets}
        for t in targets.values():  # warm-up
            with contextlib.suppress(RuntimeError):
                iperf3(t["port"], 1)
        loads = []
        for rnd in range(args.rounds):
            loads.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))
            for n in rotated(list(targets), rnd):
                pid = targets[n]["pid"]
                c0 = cpu_seconds(pid) if pid else 0.0
                t0 = time.monotonic()
                try:
                    v = iperf3(targets[n]["port"], args.duration)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    log(f"round {rnd + 1} {n}: {exc}")
                    continue
                gbps[n].append(v)
                if pid:
                    cpu[n].append((cpu_seconds(pid) - c0) / (v * (time.monotonic() - t0)))
                log(f"round {rnd + 1} {n:8} {v:6.2f} GB/s  (load {loads[-1]})")
        idle = {}
        for n, t in targets.items():
            if t["pid"] and args.idle:
                idle[n] = idle_rss(t["pid"], t["sink"], args.idle, args.idle_hold)
                log(f"idle {n}: {idle[n]}")
        block = render(targets, gbps, cpu, idle, args, command, loads)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
    print(block)
    if args.out:
        write_block(args.out, block, MARKS)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
