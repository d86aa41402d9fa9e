"""Where the rolling deploy's slow changes spend their time (issue 18): every change on one time line.

    CONSUL=/path/to/consul python -m bench.rolling_trace --mode agent --background 3000
    CONSUL=... python -m bench.rolling_trace --base /path/to/other/checkout   # that checkout's router

The rolling deploy of bench/propagation_patterns.py (30 instances of one service under load, replaced one
by one at 5/s: the new one registered critical and passed, the old one deregistered, its backend stopped
1 s later), through the router with bench/propagation_trace.py's hooks (Consul requests, the watcher's
steps, each table update with its targets, every garbage collection of generation 1 or 2 and every
event-loop stall of 3 ms or more, all on CLOCK_MONOTONIC). Beside it "Consul alone" for this service: a
plain blocking query on `/v1/health/service/<name>` in a process of its own, each answer timed.

Printed per change (ms after the change's PUT was sent): when Consul alone saw it, when the router read
the answer that brought it (and which request: the service's hot watch or a re-read), when the table with
it was swapped in, and what ran on the router's event loop meanwhile (collections, stalls, dump reads).
The slowest changes are printed with every event of their window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.propagation import PER_SERVICE  # noqa: E402
from bench.propagation_patterns import (  # noqa: E402
    Agent,
    Fleet,
    Load,
    ServiceWatch,
    addr,
    cpu_s,
    first,
    registry_status,
    start_consul,
)
from bench.propagation_trace import _router  # noqa: E402


def ms(t: float | None, t0: float) -> float:
    return round((t - t0) * 1000, 1) if t is not None and t != float("inf") else float("inf")


def run(mode: str, background: int, checkout: Path, flags: list[str], n: int = 30, per_s: float = 5.0,
        detail: int = 3) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="rolling-trace-") as tmpdir:
        tmp = Path(tmpdir)
        agent_proc, setup_s = start_consul(mode, background, tmp)
        fleet = Fleet()
        trace = tmp / "trace.jsonl"
        router = _router(["-registry.consul.addr", agent_proc.addr, *flags], trace, checkout)
        alone: ServiceWatch | None = None
        try:
            router.start()
            proxy = httpx.Client(base_url=router.url, timeout=10, trust_env=False)
            first(lambda: httpx.get(router.ui + "/health", timeout=30, trust_env=False).status_code == 200, 900)
            if background:
                last_bg = f"/bg{(background - 1) // PER_SERVICE:05d}"
                first(lambda: proxy.get(last_bg).status_code != 404, 900)
            time.sleep(2.0)
            agent = Agent(agent_proc.http_url)
            svc = f"roll-{uuid.uuid4().hex[:4]}"
            path = f"/{svc}"
            old = [fleet.add(addr(3, i)) for i in range(n)]
            for i, a in enumerate(old):
                agent.register(f"{svc}-old{i}", svc, a, fleet.port, path, status="passing")
            first(lambda: len({proxy.get(path).headers.get("x-instance") for _ in range(3 * n)}) == n, 120)
            alone = ServiceWatch(agent_proc.http_url, svc).start()
            load = Load(router.url, path).start()
            time.sleep(1.0)
            pids = (router.proc.pid if router.proc else 0, agent_proc.pid or 0)
            cpu0, s0 = [cpu_s(p) for p in pids], registry_status(router)
            changes: list[dict[str, Any]] = []
            timers: list[threading.Timer] = []
            t_start = time.monotonic()
            for i in range(n):
                time.sleep(max(0.0, t_start + i / per_s - time.monotonic()))
                new = fleet.add(addr(4, i))
                agent.register(f"{svc}-new{i}", svc, new, fleet.port, path)
                t0 = time.monotonic()
                agent.check(f"{svc}-new{i}", "passing")
                changes.append({"kind": "pass", "i": i, "addr": new, "sid": f"{svc}-new{i}", "t0": t0,
                                "put_ms": ms(time.monotonic(), t0)})
                t0 = time.monotonic()
                agent.deregister(f"{svc}-old{i}")
                changes.append({"kind": "dereg", "i": i, "addr": old[i], "sid": f"{svc}-old{i}", "t0": t0,
                                "put_ms": ms(time.monotonic(), t0)})
                t = threading.Timer(1.0, fleet.kill, (old[i],))
                t.start()
                timers.append(t)
            for t in timers:
                t.join()
            time.sleep(2.0)
            cpu = [round((cpu_s(p) - c) * 1000) for p, c in zip(pids, cpu0, strict=True)]
            s1 = registry_status(router)
            load.stop()
            failed = sum(1 for _, st, _ in load.log if st != 200)
            events = [json.loads(line) for line in trace.read_text().splitlines()]
            rows = [_row(c, svc, events, alone) for c in changes]
            print(f"{mode} {background}: {len(load.log)} requests, {failed} failed; setup {setup_s:.0f} s; over the "
                  f"deploy: CPU ms router {cpu[0]}, Consul {cpu[1]}; Consul requests {s1['requests'] - s0['requests']}, "
                  f"dumps {s1.get('dumps', 0) - s0.get('dumps', 0)}")
            _print(rows, events, svc, detail)
            return rows
        finally:
            if alone is not None:
                alone.stop()
            router.stop()
            fleet.stop()
            agent_proc.stop()


def _row(c: dict[str, Any], svc: str, events: list[dict[str, Any]], alone: ServiceWatch) -> dict[str, Any]:
    t0, a, sid, kind = c["t0"], c["addr"], c["sid"], c["kind"]
    seen = alone.seen(sid, kind == "pass", t0)

    def has(e: dict[str, Any]) -> bool | None:
        dsts = (e.get("dsts") or {}).get(svc)
        if dsts is None:
            return None
        return any(f"//{a}:" in d for d in dsts)

    applied = next((e for e in events if e["k"] == "apply" and e["t"] >= t0 and svc in (e.get("dsts") or {})
                    and has(e) == (kind == "pass")), None)
    end = applied["t"] if applied else float("inf")
    svc_path = f"/v1/health/service/{svc}"
    gets = [e for e in events if e["k"] == "get" and e["path"] == svc_path and t0 <= e["t"] <= end]
    brought = gets[-1] if gets else None
    window = [e for e in events if e["k"] in ("gc", "stall") and e.get("start", e["t"]) <= end and e["t"] >= t0]
    gcs = [e for e in window if e["k"] == "gc"]
    stalls = [e for e in window if e["k"] == "stall"]
    dumps = [e for e in events if e["k"] == "get" and e["path"].startswith("/v1/internal/") and e["t"] >= t0
             and e["sent"] <= end]
    return {**c, "total": ms(end, t0), "alone": ms(seen, t0), "after_alone": ms(end, seen) if seen != float("inf") else None,
            "answer": ("hot" if brought.get("index") is not None else "reread") if brought else None,
            "answer_sent": ms(brought["sent"], t0) if brought else None,
            "answer_decoded": ms(brought["t"], t0) if brought else None,
            "apply_start": ms(applied["start"], t0) if applied else None,
            "build_ms": round((applied["t"] - applied["start"]) * 1000, 2) if applied else None,
            "gc_ms": round(sum(e["t"] - e["start"] for e in gcs) * 1000, 1),
            "gc_gens": [e["gen"] for e in gcs],
            "stall_max": max((e["late"] for e in stalls), default=0.0), "dumps": len(dumps)}


def _print(rows: list[dict[str, Any]], events: list[dict[str, Any]], svc: str, detail: int) -> None:
    keys = ["kind", "i", "put_ms", "alone", "answer", "answer_sent", "answer_decoded", "apply_start", "total",
            "after_alone", "build_ms", "gc_ms", "gc_gens", "stall_max", "dumps"]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k)) for k in keys))
    for kind in ("pass", "dereg"):
        xs = [r["total"] for r in rows if r["kind"] == kind and r["total"] != float("inf")]
        al = [r["alone"] for r in rows if r["kind"] == kind and r["alone"] != float("inf")]
        if xs:
            print(f"{kind}: router p50 {statistics.median(xs):.1f} max {max(xs):.1f}; Consul alone p50 "
                  f"{statistics.median(al) if al else float('nan'):.1f} max {max(al) if al else float('nan'):.1f}")
    gcs = [e for e in events if e["k"] == "gc"]
    t_first = rows[0]["t0"] if rows else 0.0
    slow = [f"gen {e['gen']} {(e['t'] - e['start']) * 1000:.1f} ms at {ms(e['start'], t_first):.0f}" for e in gcs
            if e["gen"] > 0 or e["t"] - e["start"] >= 0.005]
    print("collections of gen 1-2 or 5 ms+, ms after the first change (negative: before the deploy):", slow)
    for g in (0, 1, 2):
        d = [(e["t"] - e["start"]) * 1000 for e in gcs if e["gen"] == g]
        if d:
            print(f"gc gen {g}: {len(d)} logged, p50 {statistics.median(d):.2f} ms, max {max(d):.2f} ms")
    st = [e["late"] for e in events if e["k"] == "stall"]
    if st:
        print(f"stalls >= 3 ms: {len(st)}, p50 {statistics.median(st):.1f}, max {max(st):.1f} ms")
    for r in sorted(rows, key=lambda r: -r["total"])[:detail]:
        t0 = r["t0"]
        print(f"-- {r['kind']} {r['i']}: {r['total']} ms")
        end = t0 + min(r["total"], 2000) / 1000 + 0.005
        for e in events:
            if t0 - 0.005 <= e["t"] <= end or (e["k"] in ("gc", "stall", "apply") and t0 <= e.get("start", 0) <= end):
                info = {k: v for k, v in e.items() if k not in ("t", "dsts")}
                for k in ("start", "sent"):
                    if k in info:
                        info[k] = ms(info[k], t0)
                print(f"   {ms(e['t'], t0):8.1f} {json.dumps(info)[:160]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="agent", choices=["agent", "catalog"])
    ap.add_argument("--background", type=int, default=0)
    ap.add_argument("--base", type=Path, action="append", default=[], help="checkout whose router runs (repeat)")
    ap.add_argument("--router-flag", action="append", default=[])
    ap.add_argument("--detail", type=int, default=3, help="slowest changes printed with their events")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--no-reconcile", action="store_true",
                    help="an experiment: the router makes no instance reconcile after its startup")
    a = ap.parse_args(argv)
    if a.no_reconcile:
        os.environ["ROUTER_TRACE_NO_RECONCILE"] = "1"  # read by the hooks in the router's process
    out = []
    for base in [b.resolve() for b in a.base] or [ROOT]:
        print(f"load average {os.getloadavg()}; router from {base}", flush=True)
        rows = run(a.mode, a.background, base, a.router_flag, detail=a.detail)
        out.append({"base": str(base), "mode": a.mode, "background": a.background, "rows": rows,
                    "load": os.getloadavg()})
        print(f"load average {os.getloadavg()}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
