"""Where one change's time goes, hop by hop (issue 18): timestamps, not guesses.

    CONSUL=/path/to/consul python -m bench.propagation_trace --rounds 10
    CONSUL=... python -m bench.propagation_trace --base /path/to/other/checkout   # the same, that code's router

A fresh `consul agent -dev`, the real router (one process), one backend. Each round registers a new
service critical (as the patterns benchmark does), sets its check passing 0.2 s later, and polls the proxy
until the route answers. The router runs with hooks (installed through `sitecustomize` in its process only,
not in the product) that log, on CLOCK_MONOTONIC (one clock for every process on the machine):

* every Consul request: sent, answer read (transport), decoded (`ConsulAPI.get`), and its path;
* the watcher's steps: a health answer handled, services queued for a re-read, a result accepted
  (`_accept`: from a re-read or a hot watch), the table update (`RouterState.apply`) start and end.

The benchmark side logs the check update (sent on a connection of its own, `RawPut`, and polled while the
agent answers it: "put" is when its answer was complete), a plain blocking query on
`/v1/health/state/critical` in a process of its own ("Consul alone", as bench/propagation_patterns.py)
and every poll through the proxy (start, end, status). Printed per round: each hop in ms after the PUT began,
and at the end the medians per hop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------- the router side (its own process)

_FD: int | None = None


def _ev(kind: str, **detail: Any) -> None:
    if _FD is not None:
        os.write(_FD, (json.dumps({"t": time.monotonic(), "k": kind, **detail}) + "\n").encode())


def install(path: str) -> None:
    """Hook the router's discovery steps (called from sitecustomize in the router's process)."""
    global _FD
    _FD = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    from registry.consul import api, rereads, transport, watcher
    from router.table import state

    get = api.ConsulAPI.get

    async def traced_get(self, path, *, index=None, params=None, decode=True):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        r = await get(self, path, index=index, params=params, decode=decode)
        _ev("get", path=path, sent=t0, index=index, answer=r.index,
            n=len(r.body) if hasattr(r.body, "__len__") else None)
        return r

    api.ConsulAPI.get = traced_get  # type: ignore[method-assign]

    exchange = transport.UpstreamTransport._exchange

    async def traced_exchange(self, *args, **kw):  # type: ignore[no-untyped-def]
        out = await exchange(self, *args, **kw)
        url = args[0] if isinstance(args[0], str) and "://" in args[0] else args[1] if len(args) > 1 else ""
        if not isinstance(url, str):  # the older signature: (request, headers, body)
            url = str(args[0].url)
        _ev("read", url=url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0].join(["/", ""]))
        return out

    transport.UpstreamTransport._exchange = traced_exchange  # type: ignore[method-assign]

    on_health = watcher.ConsulWatcher._on_health

    def traced_on_health(self, checks, *args, **kw):  # type: ignore[no-untyped-def]
        _ev("health", n=len(checks))
        return on_health(self, checks, *args, **kw)

    watcher.ConsulWatcher._on_health = traced_on_health  # type: ignore[method-assign]

    enqueue = rereads.ReReads.enqueue

    def traced_enqueue(self, names, *args, **kw):  # type: ignore[no-untyped-def]
        if names:
            _ev("enqueue", names=sorted(names)[:5], args=[a for a in args if isinstance(a, int)])
        return enqueue(self, names, *args, **kw)

    rereads.ReReads.enqueue = traced_enqueue  # type: ignore[method-assign]

    fail_now = getattr(rereads.ReReads, "_fail_now", None)
    if fail_now is not None:  # a failing check unrouted from a health answer (not in older checkouts)
        def traced_fail_now(self, names, checks, since):  # type: ignore[no-untyped-def]
            n = self.status.failed_now
            out = fail_now(self, names, checks, since)
            _ev("failnow", names=sorted(names)[:5], applied=self.status.failed_now - n,
                held=[x for x in sorted(names)[:5] if x in self._entries])
            return out

        rereads.ReReads._fail_now = traced_fail_now  # type: ignore[method-assign]

    accept = rereads.ReReads._accept

    def traced_accept(self, name, entries, index, since):  # type: ignore[no-untyped-def]
        _ev("accept", name=name, index=index)
        return accept(self, name, entries, index, since)

    rereads.ReReads._accept = traced_accept  # type: ignore[method-assign]

    apply = state.RouterState.apply

    def traced_apply(self, services, manual=None):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        table = apply(self, services, manual)
        # the targets of small services (bench/rolling_trace.py finds the swap with or without an instance)
        dsts = {n: [c.dst for c in cmds or () if c.op == "add"] for n, cmds in services.items() if len(cmds or ()) <= 200}
        _ev("apply", start=t0, services=sorted(services), dsts=dsts)
        return table

    state.RouterState.apply = traced_apply  # type: ignore[method-assign]

    import gc

    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        # every collection of generation 1 or 2, and young ones that took 0.5 ms or more
        if phase == "start":
            gc_start[0] = time.monotonic()
            return
        took = time.monotonic() - gc_start[0]
        if info["generation"] > 0 or took >= 0.0005:
            _ev("gc", start=gc_start[0], gen=info["generation"], collected=info["collected"],
                frozen=gc.get_freeze_count())

    gc.callbacks.append(on_gc)

    # event-loop stalls: a timer every 2 ms that logs how late it ran when 3 ms or more (what held the
    # loop then: a build, a decode, a collection); started with the watcher
    run = watcher.ConsulWatcher.run

    async def traced_run(self):  # type: ignore[no-untyped-def]
        import asyncio

        loop = asyncio.get_running_loop()

        def tick(due: float) -> None:
            now = time.monotonic()
            if now - due >= 0.003:
                _ev("stall", start=due, late=round((now - due) * 1000, 2))
            loop.call_later(0.002, tick, now + 0.002)

        loop.call_later(0.002, tick, time.monotonic() + 0.002)
        return await run(self)

    watcher.ConsulWatcher.run = traced_run  # type: ignore[method-assign]

    if os.environ.pop("ROUTER_TRACE_NO_RECONCILE", None):  # an experiment: no instance reconciles after startup
        watcher.ConsulWatcher._start_reconcile = lambda self: None  # type: ignore[method-assign]

    from router.proxy import handler, upstream

    handle = handler.ProxyApp._handle

    async def traced_handle(self, scope, out):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        r = await handle(self, scope, out)
        _ev("proxy", start=t0, path=scope.get("path"), status=r[2])
        return r

    handler.ProxyApp._handle = traced_handle  # type: ignore[method-assign]

    dial = upstream.Upstream.dial

    async def traced_dial(self, key):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        conn = await dial(self, key)
        _ev("dial", start=t0, key=str(key))
        return conn

    upstream.Upstream.dial = traced_dial  # type: ignore[method-assign]


# ---------------------------------------------------------------- the benchmark side


def _router(flags: list[str], trace: Path, checkout: Path) -> Any:
    """The router of `checkout` with the hooks: a sitecustomize on its PYTHONPATH calls install()."""
    from tests.router_proc import RouterProc

    site = Path(tempfile.mkdtemp(prefix="trace-site-"))
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "path = os.environ.pop('ROUTER_TRACE', None)  # not inherited by the router's helper processes\n"
        "if path:\n"
        f"    sys.path.insert(0, {str(checkout)!r})\n"
        "    import importlib.util\n"
        f"    spec = importlib.util.spec_from_file_location('_trace', {str(Path(__file__))!r})\n"
        "    mod = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(mod)\n"
        "    mod.install(path)\n")
    r = RouterProc(*flags, wait_ready=False, env={"PYTHONPATH": str(site), "ROUTER_TRACE": str(trace)})
    if checkout != ROOT:
        import tests.router_proc as rp

        r_start = r.start

        def start() -> Any:
            old = rp.ROOT
            rp.ROOT = checkout
            try:
                return r_start()
            finally:
                rp.ROOT = old

        r.start = start  # type: ignore[method-assign]
    return r


def run(rounds: int, flags: list[str], checkout: Path, raw: bool = False,
        critical: bool = False) -> list[dict[str, float]]:
    """Each round's hops for the pass (and, with `critical`, for the check failing 0.3 s later: a row of
    its own, marked "change": 1)."""
    from tests.backends import Backend
    from tests.consul_agent import ConsulAgent

    agent = ConsulAgent()
    agent.start()
    backend = Backend("traced").start()
    trace = Path(tempfile.mkstemp(prefix="router-trace-", suffix=".jsonl")[1])
    router = _router(["-registry.consul.addr", agent.addr, *flags], trace, checkout)
    rows: list[dict[str, float]] = []
    try:
        router.start()
        c = httpx.Client(base_url=agent.http_url, timeout=10, trust_env=False)
        proxy = httpx.Client(base_url=router.url, timeout=5, trust_env=False)
        deadline = time.monotonic() + 60
        while proxy.get("/").status_code == 503:  # the first table
            if time.monotonic() > deadline:
                raise RuntimeError(f"no table after 60 s:\n{router.output()[-3000:]}")
            time.sleep(0.05)
        from bench.propagation_patterns import CriticalWatch as ConsulAlone
        from bench.propagation_patterns import RawPut

        watch = ConsulAlone(agent.http_url).start()  # a process of its own, as in the patterns benchmark
        time.sleep(1.0)
        for k in range(rounds):
            svc = f"trace{k}-{uuid.uuid4().hex[:4]}"
            c.put("/v1/agent/service/register", json={
                "ID": f"{svc}-a", "Name": svc, "Address": "127.0.0.1", "Port": backend.port,
                "Tags": [f"urlprefix-/{svc}"],
                "Check": {"CheckID": f"{svc}-a-ttl", "TTL": "10h", "Status": "critical"}}).raise_for_status()
            time.sleep(0.2)
            polls: list[tuple[float, float, int]] = []
            put = RawPut(agent.http_url, f"/v1/agent/check/pass/{svc}-a-ttl")
            t0 = time.monotonic()
            put.send()  # polled while the agent answers it, as in the patterns benchmark
            while True:
                p0 = time.monotonic()
                st = proxy.get(f"/{svc}").status_code
                polls.append((p0, time.monotonic(), st))
                if st == 200 or p0 - t0 > 10:
                    break
            t_put = put.finish()
            time.sleep(0.3)
            changes = [(t0, t_put, polls, False, 200)]
            if critical:
                polls = []
                put = RawPut(agent.http_url, f"/v1/agent/check/fail/{svc}-a-ttl")
                t0 = time.monotonic()
                put.send()
                while True:
                    p0 = time.monotonic()
                    st = proxy.get(f"/{svc}").status_code
                    polls.append((p0, time.monotonic(), st))
                    if st == 404 or p0 - t0 > 10:
                        break
                changes.append((t0, put.finish(), polls, True, 404))
                time.sleep(0.3)
            events = [json.loads(line) for line in trace.read_text().splitlines()]
            for t0, t_put, polls, crit, want in changes:
                rows.append(_round(t0, t_put, polls, watch.seen(f"{svc}-a-ttl", crit, t0), events, svc, want))
                if crit:
                    rows[-1]["change"] = 1
                print(json.dumps(rows[-1]), flush=True)
                if raw:
                    for e in events:
                        if e["t"] >= t0 - 0.001 and e["t"] <= polls[-1][1] + 0.05:
                            print(f"    {(e['t'] - t0) * 1000:8.2f} " + json.dumps({k: v for k, v in e.items() if k != "t"}))
                    for p in polls:
                        print(f"    poll {(p[0] - t0) * 1000:8.2f} -> {(p[1] - t0) * 1000:8.2f} {p[2]}")
            c.put(f"/v1/agent/service/deregister/{svc}-a").raise_for_status()
            time.sleep(0.3)
        watch.stop()
    finally:
        router.stop()
        backend.stop()
        agent.stop()
    return rows


def burst(flags: list[str], checkout: Path, n: int = 50) -> None:
    """The burst of issue 18 through the hooked router: every hop of the 50 changes on one time line."""
    from bench.propagation_patterns import RawPut
    from tests.backends import Backend
    from tests.consul_agent import ConsulAgent

    agent = ConsulAgent()
    agent.start()
    backend = Backend("traced").start()
    trace = Path(tempfile.mkstemp(prefix="router-trace-", suffix=".jsonl")[1])
    router = _router(["-registry.consul.addr", agent.addr, *flags], trace, checkout)
    try:
        router.start()
        c = httpx.Client(base_url=agent.http_url, timeout=10, trust_env=False)
        names = [f"burst-{i:02d}" for i in range(n)]
        for name in names:
            c.put("/v1/agent/service/register", json={
                "ID": f"{name}-1", "Name": name, "Address": "127.0.0.1", "Port": backend.port,
                "Tags": [f"urlprefix-/{name}"],
                "Check": {"CheckID": f"{name}-1-ttl", "TTL": "10h", "Status": "critical"}}).raise_for_status()
        time.sleep(2.0)
        puts = [RawPut(agent.http_url, f"/v1/agent/check/pass/{name}-1-ttl") for name in names]
        t0 = time.monotonic()
        for p in puts:
            p.send()
        answered = max(p.finish() for p in puts)
        time.sleep(2.0)
        events = [json.loads(line) for line in trace.read_text().splitlines()]
        ev = [e for e in events if e["t"] >= t0]
        print(f"PUTs answered by {(answered - t0) * 1000:.1f} ms")
        routed: set[str] = set()
        for e in ev:
            at = (e["t"] - t0) * 1000
            if e["k"] == "get":
                p = e["path"]
                kind = "state" if "/state/" in p else ("hot" if e.get("index") is not None else "reread")
                print(f"{at:8.2f} {kind:6s} {p.rsplit('/', 1)[-1]} idx {e.get('answer')} sent {(e['sent'] - t0) * 1000:.2f}")
            elif e["k"] == "apply":
                routed |= set(e.get("services", []))
                print(f"{at:8.2f} apply  {len(e['services'])} services, took {(e['t'] - e['start']) * 1000:.2f} ms")
            elif e["k"] == "enqueue":
                print(f"{at:8.2f} enqueue {len(e['names'])}+ {e['names'][:3]} {e.get('args')}")
    finally:
        router.stop()
        backend.stop()
        agent.stop()


def _round(t0: float, t_put: float, polls: list[tuple[float, float, int]], consul: float,
           events: list[dict[str, Any]], svc: str, want: int = 200) -> dict[str, float]:
    """One round's hops in ms after the PUT began (inf: not seen)."""
    def ms(t: float | None) -> float:
        return round((t - t0) * 1000, 2) if t is not None and t != float("inf") else float("inf")

    ev = [e for e in events if e["t"] >= t0]
    firsts: dict[str, float] = {}

    def mark(name: str, t: float) -> None:
        firsts.setdefault(name, t)

    for e in ev:
        k = e["k"]
        if k == "get":
            p = e["path"]
            kind = ("state:" + p.rsplit("/", 1)[-1] if p.startswith("/v1/health/state/")
                    else ("hot" if e.get("index") is not None else "reread") if p == f"/v1/health/service/{svc}"
                    else p)
            mark(f"{kind} decoded", e["t"])
        elif k == "read":
            p = e["url"]
            kind = ("state:" + p.rsplit("/", 1)[-1] if p.startswith("/v1/health/state/")
                    else "service" if p == f"/v1/health/service/{svc}" else p)
            mark(f"{kind} read", e["t"])
        elif k == "enqueue" and svc in e["names"]:
            mark("enqueue", e["t"])
        elif k == "accept" and e["name"] == svc:
            mark("accept", e["t"])
        elif k == "apply" and svc in e["services"]:
            mark("apply start", e["start"])
            mark("apply end", e["t"])
    ok = next((p for p in polls if p[2] == want), None)
    row = {"put": ms(t_put), "consul alone": ms(consul)}
    row |= {k: ms(v) for k, v in sorted(firsts.items(), key=lambda kv: kv[1])}
    if ok is not None:
        row["routed poll start"] = ms(ok[0])
        row["routed poll end"] = ms(ok[1])
        row["polls"] = len(polls)
        before = [p for p in polls if p[2] != want]
        row["poll ms (mean)"] = round(statistics.fmean((p[1] - p[0]) * 1000 for p in polls), 2)
        if before:
            row["last 404 end" if want == 200 else "last 200 end"] = ms(before[-1][1])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--base", type=Path, default=ROOT, help="checkout whose router runs (default: this one)")
    ap.add_argument("--router-flag", action="append", default=[])
    ap.add_argument("--raw", action="store_true", help="print every hooked event of each round")
    ap.add_argument("--burst", action="store_true", help="the burst of 50 changes instead, on one time line")
    ap.add_argument("--critical", action="store_true", help="each round also sets the check critical (rows marked change 1)")
    a = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}; router from {a.base}", flush=True)
    if a.burst:
        burst(a.router_flag, a.base.resolve())
        print(f"load average {os.getloadavg()}", flush=True)
        return 0
    all_rows = run(a.rounds, a.router_flag, a.base.resolve(), a.raw, a.critical)
    for change in (0, 1):
        rows = [r for r in all_rows if r.get("change", 0) == change]
        if not rows:
            continue
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "change"]
        print(f"median over rounds (ms after the PUT began), {'check critical' if change else 'check passing'}:")
        for k in keys:
            xs = [r[k] for r in rows if k in r and r[k] != float("inf")]
            if xs:
                print(f"  {k:28s} {statistics.median(xs):8.2f}   (n={len(xs)}, max {max(xs):.2f})")
    print(f"load average {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
