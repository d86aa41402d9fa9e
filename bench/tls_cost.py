"""Instructions per HTTPS keep-alive request against plain HTTP, counted under callgrind: the router's own
user-space cost of TLS, whatever the machine's load.

    .venv/bin/python bench/tls_cost.py [--requests 200] [--conns 4] [--src DIR]

Why: on the shared machine neither the rates nor the CPU time per request of bench/tls_bench.py hold
still (the same build moved 154-247 µs per HTTPS request in one run); callgrind's instruction count is
exact to ~1 %. The router (`--src`, default this checkout; one worker, a TLS listener beside a plain one)
runs under `valgrind --tool=callgrind --instr-atstart=no` in front of one nginx worker (`/bench`, 19
bytes). `--conns` keep-alive connections are opened and warmed up first (TLS handshakes are not counted),
then counting is switched on (callgrind_control) for `--requests` rounds of one request on each
connection, and off again. Printed: instructions per request, TLS and plain, and the difference. Syscalls
are not instructions: count those with `strace -c -f -p PID` (both paths do two reads and two writes per
request). Run two checkouts one after the other for a before/after; the figure does not depend on load.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import BENCH_BODY, Procs, backend_nginx_conf, find_tool, free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REQUEST = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
END = BENCH_BODY.encode()


def connect(port: int, tls: bool, n: int) -> list[socket.socket]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out.append(ctx.wrap_socket(s, server_hostname="bench.example.com") if tls else s)
    return out


def one_round(conns: list[socket.socket]) -> None:
    """One request on every connection, then every answer read."""
    for s in conns:
        s.sendall(REQUEST)
    for s in conns:
        buf = b""
        while not buf.endswith(END):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {buf[-200:]!r}")
            buf += chunk


def control(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=120).stdout


def counted(pid: int, port: int, tls: bool, conns: int, rounds: int) -> float:
    """Instructions the router executed per request over `rounds` x `conns` keep-alive requests."""
    socks = connect(port, tls, conns)
    try:
        for _ in range(20):
            one_round(socks)
        control(pid, "-z")
        control(pid, "-i", "on")
        for _ in range(rounds):
            one_round(socks)
        out = control(pid, "-e")
        control(pid, "-i", "off")
    finally:
        for s in socks:
            s.close()
    total = int(out.strip().splitlines()[-1].split()[-1].replace(",", ""))  # "   Th 1  2,377,096"
    return total / (rounds * conns)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200, help="rounds of one request per connection")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout of the router to measure")
    args = ap.parse_args()
    if not find_tool("valgrind") or not find_tool("callgrind_control"):
        raise SystemExit("needs valgrind (callgrind)")
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="tls-cost-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        (tmp / "files").mkdir()
        try:
            ca = trustme.CA()
            leaf = ca.issue_cert("bench.example.com", "127.0.0.1")
            leaf.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
            leaf.private_key_pem.write_to_path(str(tmp / "key.pem"))
            web, tls_port, plain_port = free_port(), free_port(), free_port()
            (tmp / "backend.conf").write_text(backend_nginx_conf(tmp, web))
            be = procs.start("backend", [find_tool("nginx") or "nginx", "-p", str(tmp), "-e",
                                         str(tmp / "backend-error.log"), "-c", str(tmp / "backend.conf")], tmp)
            wait_ready(f"http://127.0.0.1:{web}/bench", be, 15, expect=BENCH_BODY)
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/cg.%p",
                    sys.executable, "-m", "router", "-registry.backend", "static",
                    "-registry.static.routes", f"route add bench /bench http://127.0.0.1:{web}/",
                    "-proxy.addr", f"127.0.0.1:{plain_port},127.0.0.1:{tls_port};cs=bench",
                    "-proxy.cs", f"cs=bench;type=file;cert={tmp / 'cert.pem'};key={tmp / 'key.pem'}",
                    "-ui.addr", f"127.0.0.1:{free_port()}", "-proxy.workers", "1",
                    "-registry.consul.register.enabled", "false"]
            router = procs.start("router", argv, tmp, env={"PYTHONPATH": str(args.src)}, cwd=args.src)
            wait_ready(f"http://127.0.0.1:{plain_port}/bench", router, 180, expect=BENCH_BODY)
            time.sleep(1)
            tls = counted(router.pid, tls_port, True, args.conns, args.requests)
            plain = counted(router.pid, plain_port, False, args.conns, args.requests)
        finally:
            procs.stop_all()
    n = args.requests * args.conns
    print(f"router {args.src}: {n} keep-alive requests on {args.conns} connections each way")
    print(f"instructions per request: HTTPS {tls:,.0f}  plain HTTP {plain:,.0f}  "
          f"TLS adds {tls - plain:,.0f} ({(tls / plain - 1) * 100:.0f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
