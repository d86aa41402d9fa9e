"""The burst of issue 18 with and without the router: how much of Consul's time is the router's watches'.

    CONSUL=... python -m bench.burst_floor --background 0 3000 --rounds 3 \\
        --config none --config router=/work/wt13 --config nohot=/work/l13-nohot \\
        --config stale=/work/wt13:-registry.consul.requireConsistent,false

One Consul per (mode, background size), as bench/propagation_patterns.py sets it up; then rounds of the
burst (50 services registered critical, their 50 checks set passing by 50 PUTs written back to back), each
round once per configuration, in an order that rotates per round: `none` runs no router (Consul alone:
only the plain blocking query of `CriticalWatch`), `NAME=ROOT[:flag,value,...]` runs the router of
checkout ROOT with those flags, started fresh for the round (so its hot watches are those the 50
registrations made, as in the patterns benchmark). Per burst: when the 50 PUTs were written and
answered, when Consul alone's query showed the last of them passing, when the router's table had the
last one (its log), the router's Consul requests, and the CPU of Consul and of the router from just before
the PUTs to 1 s and to 3 s after (load-independent, unlike the times).

`--profile` also takes Consul's own CPU profile over the first 2 s of each burst (`enable_debug`) and prints
the functions under which its CPU went (bench/pprof_top.py).
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

import tests.router_proc as rp
from bench.pprof_top import Profile
from bench.propagation_patterns import (
    Agent,
    CriticalWatch,
    addr,
    cpu_s,
    registry_status,
    start_consul,
    table_swaps,
)
from tests.router_proc import RouterProc

# where Consul's CPU went, by the function on the stack (cumulative, so the rows overlap)
UNDER = ["blockingQuery", "consistentRead", "SyncChanges", "(*State).syncCheck", "raftApply", "(*FSM).Apply",
         "encoding/json", "(*Server).wrap", "memdb", "runtime.gcBgMarkWorker", "syscall.Syscall"]


def parse_config(text: str) -> dict[str, Any]:
    if text == "none":
        return {"name": "none", "root": None, "flags": []}
    name, _, rest = text.partition("=")
    root, _, flags = rest.partition(":")
    return {"name": name, "root": Path(root).resolve(), "flags": [f for f in flags.split(",") if f]}


class ConsulProfile(threading.Thread):
    """Consul's CPU profile over `seconds`, fetched while the burst runs."""

    def __init__(self, url: str, seconds: int) -> None:
        super().__init__(daemon=True)
        self.url, self.seconds = url, seconds
        self.data = b""

    def run(self) -> None:
        try:
            self.data = httpx.get(f"{self.url}/debug/pprof/profile?seconds={self.seconds}", timeout=self.seconds + 30,
                                  trust_env=False).content
        except httpx.HTTPError:
            pass


def burst(agent: Agent, consul_url: str, consul_pid: int, critical: CriticalWatch, router: RouterProc | None,
          n: int, profile: bool) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:4]
    names = [f"burst{tag}-{i:02d}" for i in range(n)]
    where = {name: addr(2, i) for i, name in enumerate(names)}  # nothing listens: "routed" is the router's log
    for name in names:
        agent.register(f"{name}-1", name, where[name], 9, f"/{name}")
    time.sleep(1.0)
    puts = {name: agent.raw_check(f"{name}-1", "passing") for name in names}
    s0 = registry_status(router) if router else {}
    rpid = router.proc.pid if router and router.proc else 0
    prof = ConsulProfile(consul_url, 3) if profile else None
    if prof:
        prof.start()
        time.sleep(0.2)  # the profile has started
    c0 = (cpu_s(consul_pid), cpu_s(rpid) if rpid else 0.0)
    sent: dict[str, float] = {}
    t0 = time.time()
    m0 = time.monotonic()
    for name, put in puts.items():
        sent[name] = time.time()
        put.send()
    written = (time.monotonic() - m0) * 1000
    answered = (max(put.finish() for put in puts.values()) - m0) * 1000
    time.sleep(max(0.0, m0 + 1.0 - time.monotonic()))
    c1 = (cpu_s(consul_pid), cpu_s(rpid) if rpid else 0.0)
    time.sleep(max(0.0, m0 + 3.0 - time.monotonic()))
    c3 = (cpu_s(consul_pid), cpu_s(rpid) if rpid else 0.0)
    floor = max(critical.seen(f"{nm}-1-ttl", False, sent[nm], wall=True) for nm in names)
    out: dict[str, Any] = {
        "written_ms": round(written, 1), "answered_ms": round(answered, 1),
        "consul_alone_last_ms": round((floor - t0) * 1000, 1),
        "consul_cpu_1s_ms": round((c1[0] - c0[0]) * 1000), "consul_cpu_3s_ms": round((c3[0] - c0[0]) * 1000),
    }
    if router:
        swaps = table_swaps(router)
        routed = [next((t for t, sg, url in swaps if sg == "+" and f"//{where[nm]}:" in url and t >= sent[nm] - 0.001),
                       float("inf")) for nm in names]
        s1 = registry_status(router)
        out |= {"router_last_ms": round((max(routed) - t0) * 1000, 1),
                "router_cpu_1s_ms": round((c1[1] - c0[1]) * 1000), "router_cpu_3s_ms": round((c3[1] - c0[1]) * 1000),
                "router_requests": s1["requests"] - s0["requests"],
                "hot_covered": s1.get("covered", 0) - s0.get("covered", 0)}
    if prof:
        prof.join()
        if prof.data:
            p = Profile.read(prof.data)
            out["profile_ms"] = round(p.total_ns() / 1e6)
            out["profile_bytes"] = len(prof.data)
            out["profile_under_ms"] = {u: round(p.under(u) / 1e6) for u in UNDER}
            flat, cum = p.top()
            out["profile_cum_top"] = [(k, round(v / 1e6)) for k, v in cum.most_common(40)]
            out["profile_flat_top"] = [(k, round(v / 1e6)) for k, v in flat.most_common(15)]
    for name in names:
        agent.deregister(f"{name}-1")
    return out


def idle_cpu(consul_pid: int, seconds: float = 3.0) -> float:
    """Consul's CPU over `seconds` with nothing changing (its own background work plus idle watches)."""
    c0 = cpu_s(consul_pid)
    time.sleep(seconds)
    return round((cpu_s(consul_pid) - c0) * 1000)


def run(mode: str, background: int, configs: list[dict[str, Any]], rounds: int, n: int, profile: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmpdir:
        tmp = Path(tmpdir)
        extra = ["-hcl", "enable_debug = true"] if profile else []
        import bench.propagation_patterns as pp
        real = pp.ConsulAgent
        pp.ConsulAgent = lambda extra_args=(), **kw: real(extra_args=[*extra_args, *extra], **kw)  # type: ignore[misc]
        try:
            consul, _ = start_consul(mode, background, tmp)
        finally:
            pp.ConsulAgent = real  # type: ignore[misc]
        try:
            agent = Agent(consul.http_url)
            critical = CriticalWatch(consul.http_url).start()
            pid = consul.pid or 0
            burst(agent, consul.http_url, pid, critical, None, n, False)  # warm-up, not counted
            for r in range(rounds):
                order = configs[r % len(configs):] + configs[:r % len(configs)]
                for cfg in order:
                    router = None
                    if cfg["root"] is not None:
                        rp.ROOT = cfg["root"]
                        router = RouterProc("-registry.consul.addr", consul.addr, *cfg["flags"], wait_ready=True).start()
                        time.sleep(2.0)
                    try:
                        idle = idle_cpu(pid, 2.0)
                        res = burst(agent, consul.http_url, pid, critical, router, n, profile)
                    finally:
                        if router:
                            router.stop()
                    res |= {"config": cfg["name"], "round": r, "mode": mode, "background": background,
                            "consul_idle_2s_ms": idle, "load": [round(x, 1) for x in os.getloadavg()]}
                    print(json.dumps(res), flush=True)
                    out.append(res)
            critical.stop()
        finally:
            consul.stop()
    return out


def summary(results: list[dict[str, Any]]) -> str:
    keys = ["consul_alone_last_ms", "router_last_ms", "answered_ms", "consul_cpu_1s_ms", "consul_cpu_3s_ms",
            "consul_idle_2s_ms", "router_cpu_3s_ms", "router_requests"]
    rows = ["| mode | background | config | rounds | " + " | ".join(keys) + " |",
            "|---|---:|---|---:|" + "---:|" * len(keys)]
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["mode"], r["background"], r["config"]), []).append(r)
    for (mode, bg, cfg), rs in groups.items():
        cells = []
        for k in keys:
            xs = [r[k] for r in rs if k in r and r[k] != float("inf")]
            cells.append(f"{statistics.median(xs):g} ({min(xs):g}-{max(xs):g})" if xs else "–")
        rows.append(f"| {mode} | {bg:,} | {cfg} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--background", type=int, nargs="*", default=[0, 3000])
    ap.add_argument("--modes", nargs="*", default=["agent"], choices=["agent", "catalog"])
    ap.add_argument("--config", action="append", default=[], help="none | NAME=ROOT[:flag,value,...] (repeat)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=50, help="changes per burst")
    ap.add_argument("--profile", action="store_true", help="Consul's CPU profile over each burst")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    configs = [parse_config(c) for c in (a.config or ["none", f"router={rp.ROOT}"])]
    print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}, load {os.getloadavg()}", flush=True)
    results: list[dict[str, Any]] = []
    for bg in a.background:
        for mode in a.modes:
            results += run(mode, bg, configs, a.rounds, a.n, a.profile)
    print(summary(results), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
