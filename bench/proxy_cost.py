"""CPU time per request of the proxy core (ProxyApp) in-process, for a before/after comparison.

Why: on a shared machine wall-clock throughput (bench/http_bench.py) swings by 30 % between runs; the
process CPU time one proxied request costs swings far less. This drives ProxyApp.handle directly (no
listener) for N keep-alive GETs at a given concurrency against a backend process, over a route with 3
targets (three ports of that backend; `--targets 1` for a one-instance route, whose GETs take the path
without hedging), and prints microseconds of CPU per request. Run it against two checkouts, interleaved:

    python bench/proxy_cost.py --src /path/to/before --src . --rounds 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

BACKEND = """
import sys
from aiohttp import web
async def h(r): return web.Response(text="hello from backend\\n")
app = web.Application(); app.router.add_get("/{t:.*}", h)
runner = web.AppRunner(app, access_log=None)
import asyncio
async def main():
    await runner.setup()
    for p in sys.argv[1:]:
        await web.TCPSite(runner, "127.0.0.1", int(p)).start()
    await asyncio.Event().wait()
asyncio.run(main())
"""

DRIVER = textwrap.dedent("""
    import asyncio, sys, time, uvloop
    sys.path.insert(0, sys.argv[1])
    from router.proxy.handler import ProxyApp
    from router.table.routecmd import parse
    from router.table.state import RouterState
    ports, n, conc = sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])

    async def main():
        state = RouterState()
        cmds, _ = parse("\\n".join(f"route add svc /x http://127.0.0.1:{p}/" for p in ports), "static")
        state.apply({"svc": cmds})
        app = ProxyApp(state)
        scope = {"type": "http", "method": "GET", "path": "/x/y", "raw_path": b"/x/y", "query_string": b"",
                 "headers": [(b"host", b"bench"), (b"user-agent", b"cost")], "scheme": "http",
                 "http_version": "1.1", "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 9999)}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg):
            pass

        async def worker(k):
            for _ in range(k):
                await app.handle(dict(scope), receive, send)

        await asyncio.gather(*(worker(200 // conc) for _ in range(conc)))  # warm
        t0 = time.process_time()
        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
        print((time.process_time() - t0) / n * 1e6)

    uvloop.run(main())
""")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", action="append", type=Path, required=True, help="checkout to measure (repeat)")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--targets", type=int, default=3, choices=(1, 2, 3), help="instances of the route")
    a = p.parse_args()
    import socket

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(str(s.getsockname()[1]))
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, *ports])
    time.sleep(2)
    results: dict[str, list[float]] = {str(s): [] for s in a.src}
    try:
        for _ in range(a.rounds):
            for src in a.src:
                out = subprocess.run([sys.executable, "-c", DRIVER, str(src.resolve()), ",".join(ports[:a.targets]),
                                      str(a.requests), str(a.concurrency)], capture_output=True, text=True, check=True)
                results[str(src)].append(float(out.stdout.strip()))
    finally:
        backend.terminate()
    for src, xs in results.items():
        print(f"{src}: {sorted(xs)[len(xs) // 2]:.1f} us CPU per request (median; rounds {', '.join(f'{x:.1f}' for x in xs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
