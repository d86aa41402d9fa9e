"""Table build/update/lookup timings and memory (a script, not a test: numbers depend on the machine).

Run: /work/venv/bin/python bench/table_bench.py

Two synthetic loads, "routes" counted as (route, target) pairs like ``len(Table)``:

* ``x10``: services of 10 instances each; each service has one host (``svcN.example.com/``) and one
  no-host path (``/svcN``), so half the routes share the "" host -- the hard case for incremental
  updates.  Every 50th service also has a wildcard host.
* ``x1``: the same with one instance per service, so every pair is its own route (host + path key).
"""

from __future__ import annotations

import gc
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.table.builder import TableBuilder  # noqa: E402
from router.table.routecmd import RouteCmd  # noqa: E402

INSTANCES = 10


def service_cmds(i: int, gen: int = 0) -> list[RouteCmd]:
    """Commands of service ``i``; ``gen`` shifts the instance addresses (a deploy)."""
    name = f"svc{i}"
    srcs = [f"svc{i}.example.com/", f"/svc{i}"]
    if i % 50 == 0:
        srcs.append(f"*.w{i}.example.com/")
    out = []
    for n in range(INSTANCES):
        dst = f"http://10.{i // 250 % 250}.{i % 250}.{n + gen}:8080/"
        out += [RouteCmd("add", name, s, dst, source=f"service:{name}") for s in srcs]
    return out


def routes_for(n_routes: int) -> dict[str, list[RouteCmd]]:
    services: dict[str, list[RouteCmd]] = {}
    total, i = 0, 0
    while total < n_routes:
        cmds = service_cmds(i)
        services[f"svc{i}"] = cmds
        total += len(cmds)
        i += 1
    return services


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_update(b: TableBuilder, services: dict, repeat: int = 20) -> float:
    """Best time of replacing one service's instances (commands prepared outside the timing)."""
    k = len(services) // 2
    best = float("inf")
    for gen in range(1, repeat + 1):
        cmds = {f"svc{k}": service_cmds(k, gen)}
        t0 = time.perf_counter()
        b.update(services=cmds)
        best = min(best, time.perf_counter() - t0)
    return best


def requests_for(nsvc: int, step: int = 1) -> list[tuple[str, str]]:
    """Requests of the three kinds the tables route (exact host, wildcard host, no-host path), every
    ``step``-th service, the same kinds in the same shares for any table size."""
    out = []
    for i in range(0, nsvc, step):
        out.append((f"svc{i}.example.com", "/a/b/c"))
        out.append(("unknown.host", f"/svc{i}/deep/path"))
        if i % 50 == 0:
            out.append((f"a.w{i}.example.com:80", "/"))
    return out


def lookup_us(table, reqs: list[tuple[str, str]], n: int = 200_000, chunk: int = 500) -> float:
    """Mean lookup time over ``n`` requests drawn at random from ``reqs``.

    Every request gets its own host and path strings, made just before its chunk is timed, as a server
    parses each request into fresh strings that reuse the memory of the last ones.  (Shared string
    objects would add the bench's own cache misses to the big table's side only; one batch of ``n``
    fresh requests would stream 35 MB through the caches and evict the table.)"""
    look = table.lookup
    rnd, total = random.randrange, 0.0
    for _ in range(n // chunk):
        batch = [reqs[rnd(len(reqs))] for _ in range(chunk)]
        batch = [(h.encode().decode(), p.encode().decode()) for h, p in batch]
        t0 = time.perf_counter()
        for h, p in batch:
            look(h, p)
        total += time.perf_counter() - t0
    return total / (n // chunk * chunk) * 1e6


def lookup_rows(label: str, big, nsvc: int, rounds: int = 5) -> list[tuple[str, str]]:
    """Lookup at ``len(big)`` routes against a table of the first few services, best of ``rounds``
    interleaved rounds: (a) the same requests (for the small table's services, present in both), which shows
    whether routes elsewhere in the table cost anything; (b) requests spread uniformly over each table's
    own routes, where the big table's working set no longer fits the CPU caches."""
    few = routes_for(10)
    small = TableBuilder().update(services=few)[0]
    same = spread_small = requests_for(len(few))
    spread_big = requests_for(nsvc)
    for h, p in same:
        assert big.lookup(h, p) is not None and big.lookup(h, p).path == small.lookup(h, p).path
    best = {k: float("inf") for k in ("same big", "same small", "spread big", "spread small")}
    for _ in range(rounds):
        best["same big"] = min(best["same big"], lookup_us(big, same))
        best["same small"] = min(best["same small"], lookup_us(small, same))
        best["spread big"] = min(best["spread big"], lookup_us(big, spread_big))
        best["spread small"] = min(best["spread small"], lookup_us(small, spread_small))
    b, s = best["same big"], best["same small"]
    rows = [(f"{label} lookup, same {len(same)} requests: {len(big)} vs {len(small)} routes",
             f"{b:.2f} vs {s:.2f} us = {b / s:.2f}x")]
    b, s = best["spread big"], best["spread small"]
    rows.append((f"{label} lookup, spread over {len(spread_big)} vs {len(spread_small)} requests",
                 f"{b:.2f} vs {s:.2f} us = {b / s:.2f}x"))
    return rows


def main() -> None:
    global INSTANCES
    rows = []
    base_rss = rss_mb()
    for instances, n in [(10, 3_000), (10, 30_000), (10, 60_000), (1, 30_000), (1, 60_000)]:
        INSTANCES = instances
        label = f"x{instances}"
        services = routes_for(n)
        gc.collect()
        b = TableBuilder()
        t0, c0 = time.perf_counter(), time.process_time()
        table, errs = b.update(services=services, manual=[])
        build, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert not errs and len(table) >= n
        rows.append((f"{label} full build, {len(table)} routes ({table.route_count} keys)", f"{build * 1000:.0f} ms wall, {cpu * 1000:.0f} ms cpu"))
        if n == 30_000:
            rows.append((f"{label} one-service update at {len(b.table)} routes", f"{one_update(b, services) * 1000:.2f} ms"))
            b.update(manual=[RouteCmd("weight", "svc1", "/svc1", weight=0.5, line=1, source="kv"),
                             RouteCmd("del", "svc2", line=2, source="kv")])
            rows.append((f"{label}   same, with a 2-line manual list", f"{one_update(b, services) * 1000:.2f} ms"))
        if n == 60_000:
            rows += lookup_rows(label, table, len(services))
            gc.collect()
            rows.append((f"{label} RSS with {len(table)} routes (process)",
                         f"{rss_mb():.0f} MB (start {base_rss:.0f} MB)"))
        del b, table
    width = max(len(r[0]) for r in rows)
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    for name, val in rows:
        print(f"{name:<{width}}  {val}")


if __name__ == "__main__":
    main()
