"""TCP through a `proto=tcp` route: bytes per second spliced, and the router's RSS over idle connections.

    .venv/bin/python bench/tcp_bench.py [--mib 2048] [--idle 1000]

Starts the real router (`python -m router`, one worker, static routes) with a TCP listener whose route
points at a local sink, pushes `--mib` MiB through it from one client (and the same straight to the sink,
side by side, for the ratio), then opens `--idle` idle connections through it and reports the router's
RSS before and after. Loopback only; numbers from a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sink_main(port: int) -> None:
    """The sink, in its own process (no GIL shared with the client): reads into one buffer, drops it."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(2048)

    def one(c: socket.socket) -> None:
        buf = bytearray(CHUNK)
        with c:
            while c.recv_into(buf):
                pass

    while True:
        c, _ = srv.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def sink() -> tuple[int, subprocess.Popen]:
    port = free_port()
    p = subprocess.Popen([sys.executable, __file__, "--sink", str(port)])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return port, p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sink did not start")


def push(port: int, mib: int) -> float:
    buf = memoryview(os.urandom(CHUNK))
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        for _ in range(mib):
            s.sendall(buf)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the sink closes after the FIN the router passed on
        return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--sink", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        sink_main(args.sink)
        return 0
    sink_port, sink_proc = sink()
    tport, ui = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "router", "-proxy.addr", f"127.0.0.1:{tport};proto=tcp",
                             "-ui.addr", f"127.0.0.1:{ui}", "-proxy.workers", "1", "-registry.backend", "static",
                             "-registry.static.routes", f"route add sink :{tport} tcp://127.0.0.1:{sink_port}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", tport), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        direct = push(sink_port, args.mib)
        cpu0 = cpu_seconds(proc.pid)
        routed = push(tport, args.mib)
        cpu = cpu_seconds(proc.pid) - cpu0
        gb = args.mib * CHUNK / 1e9
        print(f"{args.mib} MiB, one connection: direct {gb / direct:.2f} GB/s, through the router {gb / routed:.2f} GB/s "
              f"({routed / direct:.2f}x the direct time); router CPU {cpu / gb:.2f} s per GB "
              f"(so {gb / cpu if cpu else float('inf'):.2f} GB/s per core)")
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        idle = [socket.create_connection(("127.0.0.1", tport)) for _ in range(args.idle)]
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        print(f"router RSS: {before / 1024:.1f} MiB, with {len(idle)} idle TCP connections {after / 1024:.1f} MiB "
              f"({(after - before) / len(idle):.1f} KiB each, upstream sides included)")
        for s in idle:
            s.close()
    finally:
        proc.terminate()
        proc.wait(10)
        sink_proc.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
