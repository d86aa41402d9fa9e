"""Consul's own cost of reading every instance, per read strategy (issue 18, the startup load).

Each strategy reads the raw answers only (no decoding: that is the helper's cost, bench/startup_cost.py),
on keep-alive connections of the standard library's client, and reports the wall time, the bytes, the
Consul agent's CPU seconds (from /proc) and its Go runtime's garbage collections and allocations over the
reads (`/v1/agent/metrics`, sampled once a second by Consul: the figures are read after a 1.2 s pause).
The strategies are run in turn, `--rounds` times, so a slow moment of the shared machine falls on all.

    python -m bench.startup_reads 127.0.0.1:8500 CONSUL_PID [--rounds 3] [--only nodes4 any+cat4]

Strategies (names: see STRATEGIES): the node list and every node's `/v1/catalog/node/<n>` and
`/v1/health/node/<n>`, N nodes at a time (what the startup load did); the same with gzip; every node's
catalog answer with all checks from one `/v1/health/state/any` beside them; the one-request dump
`/v1/internal/ui/nodes`; and the single reads alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """GETs of raw bodies, one keep-alive connection per thread."""

    def __init__(self, addr: str, gzip: bool = False) -> None:
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        self.gzip = gzip
        self.local = threading.local()
        self.bytes = 0
        self.wire = 0
        self.requests = 0
        self.lock = threading.Lock()

    def get(self, path: str) -> bytes:
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection(self.host, self.port, timeout=600)
        c.request("GET", path, headers={"Accept-Encoding": "gzip"} if self.gzip else {})
        r = c.getresponse()
        body = r.read()
        wire = len(body)
        if r.getheader("Content-Encoding") == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}")
        with self.lock:
            self.bytes += len(body)
            self.wire += wire
            self.requests += 1
        return body


def node_names(c: Client) -> list[str]:
    return [n["Node"] for n in json.loads(c.get("/v1/catalog/nodes"))]


def per_node(paths: tuple[str, ...], concurrency: int, extra: tuple[str, ...] = ()) -> Callable[[Client], None]:
    def run(c: Client) -> None:
        names = node_names(c)
        jobs = [p + quote(n, safe="") for n in names for p in paths] + list(extra)
        # the single reads first, so they run beside the per-node ones instead of after them
        jobs = list(extra) + [j for j in jobs if j not in extra]
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(c.get, jobs))

    return run


def single(*paths: str) -> Callable[[Client], None]:
    def run(c: Client) -> None:
        for p in paths:
            c.get(p)

    return run


CAT, HEALTH = "/v1/catalog/node/", "/v1/health/node/"
STRATEGIES: dict[str, tuple[Callable[[Client], None], bool]] = {
    "nodes1": (per_node((CAT, HEALTH), 1), False),
    "nodes2": (per_node((CAT, HEALTH), 2), False),
    "nodes4": (per_node((CAT, HEALTH), 4), False),
    "nodes8": (per_node((CAT, HEALTH), 8), False),
    "nodes4-gzip": (per_node((CAT, HEALTH), 4), True),
    "cat4": (per_node((CAT,), 4), False),
    "health4": (per_node((HEALTH,), 4), False),
    "any+cat4": (per_node((CAT,), 4, ("/v1/health/state/any",)), False),
    "any+cat2": (per_node((CAT,), 2, ("/v1/health/state/any",)), False),
    "any": (single("/v1/health/state/any"), False),
    "services": (single("/v1/catalog/services"), False),
    "ui-nodes": (single("/v1/internal/ui/nodes"), False),
}


def metrics(c: Client) -> dict[str, float]:
    d = json.loads(c.get("/v1/agent/metrics"))
    return {g["Name"].rsplit(".", 1)[-1]: g["Value"] for g in d["Gauges"] if ".runtime." in g["Name"]}


_GC = re.compile(r"^gc \d+ @[\d.]+s \d+%: [\d.+]+ ms clock, ([\d.+/]+) ms cpu, (\d+)->(\d+)->(\d+) MB")


def gc_log(log: Path | None) -> list[tuple[float, int]]:
    """The agent's garbage collections so far (GODEBUG=gctrace=1): CPU seconds and live heap MB of each."""
    if log is None:
        return []
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = _GC.match(line)
        if m:
            out.append((sum(float(x) for x in re.split(r"[+/]", m.group(1))) / 1000, int(m.group(4))))
    return out


def measure(addr: str, pid: int, name: str, log: Path | None = None) -> dict[str, float | str]:
    fn, gzip = STRATEGIES[name]
    probe = Client(addr)
    time.sleep(1.2)
    g0 = len(gc_log(log))
    c = Client(addr, gzip)
    k0, p0, t0 = cpu_of(pid), time.process_time(), time.perf_counter()
    fn(c)
    wall, kcpu, pcpu = time.perf_counter() - t0, cpu_of(pid) - k0, time.process_time() - p0
    time.sleep(1.2)
    m1 = metrics(probe)
    gcs = gc_log(log)[g0:]
    return {"consul_gcs": len(gcs), "consul_gc_cpu_s": round(sum(c for c, _ in gcs), 2),
            "consul_cpu_minus_gc_s": round(kcpu - sum(c for c, _ in gcs), 2), "strategy": name, "wall_s": round(wall, 2), "consul_cpu_s": round(kcpu, 2), "client_cpu_s": round(pcpu, 2),
            "requests": c.requests, "mb": round(c.bytes / 2**20, 1), "wire_mb": round(c.wire / 2**20, 1),
            "heap_mb": round(m1["alloc_bytes"] / 2**20),
            "load": round(os.getloadavg()[0], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("addr")
    ap.add_argument("pid", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--log", type=Path, help="the agent's log, when it runs with GODEBUG=gctrace=1 "
                                             "(bench/startup_consul.py): its GCs during each strategy")
    ap.add_argument("--only", nargs="*", choices=list(STRATEGIES), default=["nodes4", "any+cat4", "ui-nodes"])
    a = ap.parse_args()
    got: dict[str, list[dict[str, float | str]]] = {}
    for r in range(a.rounds):
        order = a.only[r % len(a.only):] + a.only[:r % len(a.only)]  # rotated: no strategy always first
        for name in order:
            m = measure(a.addr, a.pid, name, a.log)
            got.setdefault(name, []).append(m)
            print(json.dumps(m), flush=True)
    print("strategy | rounds | wall s (median; range) | Consul CPU s (median; range) | Consul CPU without its GCs | "
          "Consul GCs per round | client CPU s | MB (wire) | requests", file=sys.stderr)
    def col(ms: list[dict[str, float | str]], k: str) -> str:
        xs = [float(m[k]) for m in ms]
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    for name, ms in got.items():
        print(f"{name} | {len(ms)} | {col(ms, 'wall_s')} | {col(ms, 'consul_cpu_s')} | {col(ms, 'consul_cpu_minus_gc_s')} | "
              f"{'/'.join(str(m['consul_gcs']) for m in ms)} | {col(ms, 'client_cpu_s')} | "
              f"{ms[0]['mb']} ({ms[0]['wire_mb']}) | {ms[0]['requests']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
