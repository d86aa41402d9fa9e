"""CPU cost per proxied-style request of candidate upstream clients (httpx, aiohttp, router.upstream).

Measures process CPU time (not wall time, so a noisy machine matters less) for N keep-alive GETs
from one asyncio loop against a local backend running in another process. Run:
    python bench/client_cost.py [--requests 5000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKEND = """
import asyncio, sys
from aiohttp import web
async def h(r): return web.Response(text="hello from backend!")
app = web.Application(); app.router.add_get("/", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def run_httpx(url: str, n: int, conc: int) -> None:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=conc)) as c:
        async def worker(k: int) -> None:
            for _ in range(k):
                r = await c.get(url)
                await r.aread()
        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))


async def run_aiohttp(url: str, n: int, conc: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async def worker(k: int) -> None:
            for _ in range(k):
                async with s.get(url) as r:
                    await r.read()
        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))


async def run_lean(url: str, n: int, conc: int) -> None:
    from router.proxy.upstream import Upstream

    up = Upstream()

    async def worker(k: int) -> None:
        for _ in range(k):
            r = await up.request("GET", url, [("host", "bench")], None)
            async for _chunk in r.content.iter_any():
                pass
            r.release()
    await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
    await up.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=20)
    args = ap.parse_args()
    from tests.router_proc import free_port

    port = free_port()
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(port)])
    try:
        time.sleep(1.5)
        url = f"http://127.0.0.1:{port}/"
        results = {}
        for name, fn in [("httpx", run_httpx), ("aiohttp", run_aiohttp), ("lean", run_lean)] * 2:  # interleaved, twice
            c0, w0 = time.process_time(), time.perf_counter()
            asyncio.run(fn(url, args.requests, args.concurrency))
            cpu_us = (time.process_time() - c0) / args.requests * 1e6
            wall = time.perf_counter() - w0
            results.setdefault(name, []).append((cpu_us, args.requests / wall))
        print(f"{'client':8} {'CPU us/request (best of 2)':>28} {'req/s (best of 2)':>18}")
        for name, rows in results.items():
            print(f"{name:8} {min(r[0] for r in rows):28.0f} {max(r[1] for r in rows):18.0f}")
    finally:
        backend.terminate()
        backend.wait()


if __name__ == "__main__":
    main()
