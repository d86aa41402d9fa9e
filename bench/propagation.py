"""Propagation benchmark (issue 3): how fast does a Consul health change reach the proxy?

    CONSUL=/path/to/consul python -m bench.propagation --instances 0 1000 10000 --samples 20
    python -m bench.propagation --table-only          # table build / change time and RSS only
    CONSUL=... python -m bench.propagation --patterns # issue 18's change patterns (bench/propagation_patterns.py)

For each N it starts a fresh `consul agent -dev`, registers N background instances (3 per service,
each with a passing check and a `urlprefix-` tag), starts the real router (tests/router_proc.py) and then,
for one fresh service with a TTL check on the agent, measures

* up:   "TTL check set passing" -> "first request through the proxy reaches the backend"
* down: "TTL check set critical" -> "the proxy answers 404 (no route)"

and the Consul HTTP requests the router made per change (`registry.requests` in /api/status).

Background instances are registered in the catalog on external nodes (through `/v1/txn`, 32 per
transaction) with a catalog-level check whose Status is "passing": no agent-side TTL timer, so they
never flap. The measured service goes through the agent API
with a real TTL check, as a user's service would.

The table figures build synthetic route commands in-process and time `TableBuilder.update`; RSS is read
from a fresh child process so earlier runs do not inflate it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.backends import Backend  # noqa: E402
from tests.consul_agent import ConsulAgent  # noqa: E402
from tests.consul_helpers import deregister, make_client, register, set_check  # noqa: E402
from tests.router_proc import RouterProc  # noqa: E402

PER_SERVICE = 3


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: a p90 of 20 samples is the 18th)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"p50": round(pct(xs, 50), 1), "p90": round(pct(xs, 90), 1), "max": round(max(xs), 1),
            "mean": round(statistics.fmean(xs), 1)}


DEAD_PORT = 9  # nothing listens there: synthetic instances refuse connections at once


def dead_addr(i: int) -> str:
    """A distinct loopback address for synthetic instance i, at DEAD_PORT.  Not 127.0.0.1:<20000+i> as
    before: the test helpers pick the router's own ports from 20000-32000, so a synthetic route could
    point at the router itself, and a request on it looped through the router until memory ran out
    (hundreds of MB in the RSS figures of some runs)."""
    return f"127.{1 + i // 65536 % 254}.{i // 256 % 256}.{i % 256}"


NODES = 100
TXN_INSTANCES = 32  # a Consul transaction takes at most 64 operations: a service and its check each


def background_instance(i: int) -> tuple[str, dict[str, object], dict[str, object]]:
    """Synthetic instance i: its node, its service and its passing catalog-level check."""
    svc = f"bg{i // PER_SERVICE:05d}"
    sid = f"{svc}-{i % PER_SERVICE}"
    return (f"bgnode{i % NODES:03d}",
            {"ID": sid, "Service": svc, "Address": dead_addr(i), "Port": DEAD_PORT, "Tags": [f"urlprefix-/{svc}"]},
            {"CheckID": f"{sid}-chk", "Name": "bg", "Status": "passing", "ServiceID": sid})


def register_background(http_url: str, instances: int, workers: int = 4) -> float:
    """N instances over ceil(N/3) services on 100 external nodes; returns seconds taken.

    Through `/v1/txn`, 32 instances per transaction (one Raft write each instead of one per instance):
    100,000 took 692 s one `/v1/catalog/register` at a time on the shared machine. The data are the same
    as `/v1/catalog/register` with `SkipNodeUpdate` makes."""
    t0 = time.monotonic()
    client = httpx.Client(base_url=http_url, timeout=120, trust_env=False,
                          limits=httpx.Limits(max_connections=workers))

    def txn(ops: list[dict[str, object]]) -> None:
        r = client.put("/v1/txn", json=ops)
        if r.status_code != 200:
            raise RuntimeError(f"/v1/txn: HTTP {r.status_code}: {r.text[:300]}")

    nodes = [{"Node": {"Verb": "set", "Node": {"Node": f"bgnode{n:03d}", "Address": "127.0.0.1"}}}
             for n in range(min(NODES, instances))]
    for k in range(0, len(nodes), 64):
        txn(nodes[k:k + 64])

    def batch(start: int) -> None:
        ops: list[dict[str, object]] = []
        for i in range(start, min(instances, start + TXN_INSTANCES)):
            node, service, check = background_instance(i)
            ops.append({"Service": {"Verb": "set", "Node": node, "Service": service}})
            ops.append({"Check": {"Verb": "set", "Check": {"Node": node, **check}}})
        txn(ops)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(batch, range(0, instances, TXN_INSTANCES)))
    client.close()
    return time.monotonic() - t0


def requests_made(ui: str) -> int:
    return int(httpx.get(ui + "/api/status", timeout=5, trust_env=False).json()["registry"]["requests"])


def wait_for(cond, timeout: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    """Poll cond() as fast as one request allows; return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return time.monotonic()
        except httpx.HTTPError:  # a router busy with a large initial load may not answer in time
            time.sleep(0.1)
    raise TimeoutError("condition not reached")


def measure_propagation(instances: int, samples: int, flags: list[str]) -> dict[str, object]:
    agent = ConsulAgent()
    agent.start()
    backend = Backend("fresh").start()
    router: RouterProc | None = None
    try:
        reg_s = register_background(agent.http_url, instances) if instances else 0.0
        t_start = time.monotonic()
        router = RouterProc("-registry.consul.addr", agent.addr, *flags, wait_ready=False)
        router.start()
        ready = wait_for(lambda: httpx.get(router.ui + "/health", timeout=5, trust_env=False).status_code == 200,
                         600)
        ready_s = ready - t_start
        startup_requests = requests_made(router.ui)
        c = make_client(agent.port)
        svc = f"fresh-{uuid.uuid4().hex[:6]}"
        path = f"/{svc}"
        register(c, svc, f"{svc}-1", backend.port, tags=[f"urlprefix-{path}"], status="critical")
        proxy = httpx.Client(base_url=router.url, timeout=5, trust_env=False)
        # wait until the background routes are in (the initial sync is not what we measure)
        t_sync0 = time.monotonic()
        if instances:
            wait_for(lambda: proxy.get(f"/bg{(instances - 1) // PER_SERVICE:05d}").status_code != 404, 600)
        sync_s = time.monotonic() - t_sync0
        time.sleep(1.0)
        up: list[float] = []
        down: list[float] = []
        reqs_up: list[int] = []
        reqs_down: list[int] = []
        for _ in range(samples):
            r0 = requests_made(router.ui)
            t0 = time.monotonic()
            set_check(c, f"{svc}-1", "passing")
            t1 = wait_for(lambda: proxy.get(path).status_code == 200)
            up.append((t1 - t0) * 1000)
            time.sleep(0.3)  # let the watch loops settle before counting
            reqs_up.append(requests_made(router.ui) - r0)
            r0 = requests_made(router.ui)
            t0 = time.monotonic()
            set_check(c, f"{svc}-1", "critical")
            t1 = wait_for(lambda: proxy.get(path).status_code == 404)
            down.append((t1 - t0) * 1000)
            time.sleep(0.3)
            reqs_down.append(requests_made(router.ui) - r0)
        st = httpx.get(router.ui + "/api/status", timeout=5, trust_env=False).json()
        rss_kb = _rss_kb(router.proc.pid if router.proc else 0)
        deregister(c, f"{svc}-1")
        return {
            "instances": instances, "services": -(-instances // PER_SERVICE), "samples": samples,
            "register_s": round(reg_s, 1), "ready_s": round(ready_s, 2),
            "startup_requests": startup_requests, "routed_after_ready_s": round(sync_s, 2),
            "up_ms": summary(up), "down_ms": summary(down),
            "requests_per_up_change": summary([float(x) for x in reqs_up]),
            "requests_per_down_change": summary([float(x) for x in reqs_down]),
            "router_rss_mb": round(rss_kb / 1024, 1),
            "router_observed": st.get("registry", {}).get("propagation"),
        }
    finally:
        if router:
            router.stop()
        backend.stop()
        agent.stop()


def _tree_rss_kb(pid: int) -> list[tuple[str, int]]:
    """(role, VmRSS kB) of `pid` and of every process below it: the main process, its proxy workers and
    its helpers (the instance-dump helper, multiprocessing's resource tracker)."""
    out: list[tuple[str, int]] = []
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        role = "worker" if b"router.run.workers" in cmd else "main" if b"router" in cmd else "helper"
        kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
        out.append((role, kb))
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += _tree_rss_kb(int(child))
    except (OSError, StopIteration):
        pass
    return out


def _rss_kb(pid: int) -> int:
    """VmRSS of `pid` and of its children (the instance-dump helper and proxy workers count too)."""
    return sum(kb for _, kb in _tree_rss_kb(pid))


def rss_by_process(pid: int) -> tuple[float, list[tuple[str, float]]]:
    """The summed VmRSS of `pid`'s tree in MB, and (role, MB) of each of its processes (one walk)."""
    parts = _tree_rss_kb(pid)
    return round(sum(kb for _, kb in parts) / 1024, 1), [(role, round(kb / 1024, 1)) for role, kb in parts]


_TABLE_CHILD = r"""
import json, sys, time, resource
sys.path.insert(0, sys.argv[2])
from router.table.routecmd import RouteCmd
from router.table.builder import TableBuilder
from pathlib import Path
routes = int(sys.argv[1]); per = 3
svcs = {}
for i in range(routes):
    s = f"s{i // per:05d}"
    svcs.setdefault(s, []).append(RouteCmd("add", s, f"/{s}", f"http://127.{1 + i // 65536 % 254}.{i // 256 % 256}.{i % 256}:9/",
                                           source=f"service:{s}"))
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss()
b = TableBuilder()
t0 = time.perf_counter(); table, _ = b.update(svcs); full = (time.perf_counter() - t0) * 1000
built = len(table)
one = []
name = next(iter(svcs))
for k in range(20):
    cmds = svcs[name][: 1 + k % per]
    t0 = time.perf_counter(); table, _ = b.update({name: cmds}); one.append((time.perf_counter() - t0) * 1000)
one.sort()
print(json.dumps({"routes": built, "full_build_ms": round(full, 1), "one_change_ms_p50": round(one[10], 3),
                  "one_change_ms_max": round(one[-1], 3), "rss_mb": round(rss(), 1),
                  "rss_mb_before_build": round(base, 1)}))
"""


def measure_table(routes: int) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _TABLE_CHILD, str(routes), str(ROOT)], check=True,
                         capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_router_rss(routes: int) -> dict[str, object]:
    """The whole router process (one worker) serving `routes` routes from the file backend: RSS once the
    table is loaded, and after 2,000 requests spread over the routes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routes.txt"
        per = 3
        path.write_text("".join(f"route add s{i // per:05d} /s{i // per:05d} http://{dead_addr(i)}:{DEAD_PORT}/\n"
                                for i in range(routes)))
        router = RouterProc("-registry.backend", "file", "-registry.file.path", str(path), "-log.routes.format",
                            "delta", "-proxy.workers", "1", "-proxy.responseheadertimeout", "1s")
        t0 = time.monotonic()
        router.start()
        try:
            wait_for(lambda: len(httpx.get(router.ui + "/api/routes", timeout=30).json()) == routes, timeout=120)
            ready = time.monotonic() - t0
            assert router.proc is not None
            rss_loaded = _rss_kb(router.proc.pid) / 1024
            with httpx.Client(timeout=10) as c:
                for k in range(2000):  # mostly 502s (no backends): the lookups and the counters are what count
                    with contextlib.suppress(httpx.HTTPError):
                        c.get(f"{router.url}/s{(k * 7919) % (routes // per):05d}")
            return {"routes": routes, "router_ready_s": round(ready, 2), "router_rss_mb": round(rss_loaded, 1),
                    "router_rss_mb_after_requests": round(_rss_kb(router.proc.pid) / 1024, 1)}
        finally:
            router.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, nargs="*", default=[0, 1000, 10000])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--routes", type=int, nargs="*", default=[3000, 30000, 60000])
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--router-flag", action="append", default=[], help="extra router flag (repeat: -k v)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--patterns", action="store_true",
                    help="issue 18's change patterns instead (bench/propagation_patterns.py)")
    ap.add_argument("--background", type=int, nargs="*", default=[0, 3000],
                    help="--patterns: background instances (the issue's sizes: 0 3000 30000; 100000 for catalog)")
    ap.add_argument("--modes", nargs="*", default=["agent", "catalog"], choices=["agent", "catalog"])
    ap.add_argument("--rounds", type=int, default=20, help="--patterns: rounds of the new-instance pattern (p90 = the 2nd worst of 20)")
    ap.add_argument("--bursts", type=int, default=5,
                    help="--patterns: bursts per configuration, 1 to BURSTS_MAX (5; the median is shown)")
    ap.add_argument("--only", nargs="*", default=["new", "burst", "rolling"], choices=["new", "burst", "rolling"])
    ap.add_argument("--router-root", type=Path, action="append", default=[],
                    help="--patterns: run the router of this checkout (repeat: each in turn, per mode and "
                         "size, back to back; default this one), e.g. a checkout of main for a baseline")
    a = ap.parse_args(argv)
    if a.patterns:
        import tests.router_proc as rp
        from bench import propagation_patterns as pp

        print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}", flush=True)
        out = []
        roots = [r.resolve() for r in a.router_root] or [ROOT]
        for n in a.background:
            for mode in a.modes:
                for root in roots:
                    rp.ROOT = root  # RouterProc runs `python -m router` in this directory
                    code = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True,
                                          text=True).stdout.strip()
                    r = pp.run_one(mode, n, a.rounds, a.router_flag, set(a.only), a.bursts)
                    r["code"] = f"{root.name} {code}"
                    r["load"] = [round(x, 1) for x in os.getloadavg()]
                    out.append(r)
                    print(json.dumps(r), flush=True)
        print(pp.table(out), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2))
        return 0
    results: dict[str, list[dict[str, object]]] = {"propagation": [], "table": []}
    print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}", flush=True)
    if not a.table_only:
        for n in a.instances:
            r = measure_propagation(n, a.samples, a.router_flag)
            results["propagation"].append(r)
            print(json.dumps(r), flush=True)
    if not a.no_table:
        for n in a.routes:
            r = measure_table(n) | measure_router_rss(n)
            results["table"].append(r)
            print(json.dumps(r), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
