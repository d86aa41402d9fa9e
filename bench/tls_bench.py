"""HTTPS and HTTP/2 through the router, side by side with plain HTTP/1.1, with h2load (Debian's nghttp2-client).

    .venv/bin/python bench/tls_bench.py [--requests 20000]

Starts the real router (one process, static route to an aiohttp backend in this process) with a plain
listener and a TLS listener (a trustme certificate), then runs h2load three ways: HTTP/2 (10 connections
x 10 streams), HTTP/1.1 over TLS (10 connections) and plain HTTP/1.1 (10 connections). Loopback only;
numbers from a shared machine are noisy: compare within one run. Needs the router's own HTTP listener.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backends import Backend  # noqa: E402
from tests.router_proc import RouterProc, free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    ca = trustme.CA()
    tmp = Path(tempfile.mkdtemp())
    leaf = ca.issue_cert("bench.example.com")
    (tmp / "site.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    b = Backend("b1").start()
    tport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", f"route add svc / http://127.0.0.1:{b.port}/")
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};cs=c", "-proxy.cs",
                f"cs=c;type=file;cert={tmp / 'site.pem'}"]
    try:
        with r:
            for label, extra, url in (
                    ("HTTP/2, 10 connections x 10 streams", ["-c10", "-m10"], f"https://127.0.0.1:{tport}/x"),
                    ("HTTP/1.1 over TLS, 10 connections", ["-c10", "-m1", "--h1"], f"https://127.0.0.1:{tport}/x"),
                    ("plain HTTP/1.1, 10 connections", ["-c10", "-m1", "--h1"], f"http://127.0.0.1:{r.proxy_port}/x")):
                out = subprocess.run(["h2load", f"-n{args.requests}", *extra, url], capture_output=True, text=True,
                                     timeout=600).stdout
                rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
                done = re.search(r"requests: .*", out)
                print(f"{label}: {rate.group(1) if rate else '?'} req/s ({done.group(0) if done else out[-300:]})")
    finally:
        b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
