"""Route weights hold under the load-aware default picker, end to end: a 10% canary gets 10% ± 1% of
10,000 requests (issue 17). Real router, real backend processes, 16 concurrent keep-alive clients; the
count is of answers by backend name, no timing involved."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.backend_proc import BackendProc
from tests.router_proc import RouterProc

N = 10_000


def test_a_ten_percent_canary_gets_ten_percent_of_10000_requests() -> None:
    backs = [BackendProc(f"main{i}").spawn() for i in range(3)] + [BackendProc("canary").spawn()]
    try:
        for b in backs:  # started together, each awaited until it answers (a hang guard, not a bound)
            b.wait()
        routes = "\n".join(
            [f'route add svc /w http://127.0.0.1:{b.port}/ tags "main"' for b in backs[:3]]
            + [f'route add svc /w http://127.0.0.1:{backs[3].port}/ tags "canary"',
               'route weight svc /w weight 0.1 tags "canary"'])
        with RouterProc.static(routes) as r:
            async def run() -> Counter[str]:
                got: Counter[str] = Counter()

                async def client(n: int) -> None:
                    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
                        for _ in range(n):
                            async with s.get(r.url + "/w") as resp:
                                got[(await resp.text()).strip() if resp.status == 200 else str(resp.status)] += 1

                await asyncio.gather(*(client(N // 16) for _ in range(16)))
                return got

            got = asyncio.run(run())
        print(f"weights: {dict(got)}")
        assert sum(got.values()) == N // 16 * 16
        assert set(got) == {"main0", "main1", "main2", "canary"}  # only answers, no errors
        assert 0.09 * N <= got["canary"] <= 0.11 * N, got
    finally:
        for b in backs:
            b.stop()
