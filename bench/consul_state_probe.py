"""How fast does Consul itself answer the health queries a watcher could use? (issue 3, docs/discovery.md)

    CONSUL=/path/to/consul python -m bench.consul_state_probe --instances 30000

Starts a fresh `consul agent -dev`, registers N background instances (as bench/propagation.py does) and one
service with a TTL check, then reports for each candidate health query

* the time of one plain read (p50 of 10), and the answer's size;
* for the blocking form: the time from "TTL check update sent" to "blocking query answered", over 10
  status flips (passing <-> critical).

No router is involved: this isolates Consul's share of the propagation delay, which is what decided
between `/v1/health/state/any?filter=...` and the per-state endpoints.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx

from bench.propagation import register_background
from tests.consul_agent import ConsulAgent
from tests.consul_helpers import make_client, register, set_check

QUERIES = {
    "state/any?filter=non-passing": ("/v1/health/state/any", {"filter": 'Status != "passing"'}),
    "state/critical": ("/v1/health/state/critical", {}),
    "state/warning": ("/v1/health/state/warning", {}),
    "health/service/<one>": ("/v1/health/service/probe", {}),
}
BLOCKING = ("state/any?filter=non-passing", "state/critical")


def probe(instances: int, flips: int = 10) -> None:
    agent = ConsulAgent()
    agent.start()
    try:
        took = register_background(agent.http_url, instances) if instances else 0.0
        print(f"{instances} instances registered in {took:.1f} s")
        c = make_client(agent.port)
        register(c, "probe", "probe-1", 1, tags=["urlprefix-/probe"], status="critical")
        h = httpx.Client(base_url=agent.http_url, timeout=60, trust_env=False)
        for name, (path, params) in QUERIES.items():
            q = {**params, "consistent": ""}
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                r = h.get(path, params=q)
                times.append((time.perf_counter() - t0) * 1000)
            print(f"read {name}: p50 {statistics.median(times):.2f} ms, {len(r.content)} bytes")
        for name in BLOCKING:
            path, params = QUERIES[name]
            q = {**params, "consistent": ""}
            status = "critical"
            wakes = []
            for _ in range(flips):
                index = h.get(path, params=q).headers["X-Consul-Index"]
                answered: list[float] = []

                def block() -> None:
                    h.get(path, params={**q, "index": index, "wait": "30s"})  # noqa: B023
                    answered.append(time.perf_counter())  # noqa: B023

                t = threading.Thread(target=block)
                t.start()
                time.sleep(0.2)  # the blocking query is parked in Consul
                status = "passing" if status == "critical" else "critical"
                t0 = time.perf_counter()
                set_check(c, "probe-1", status)
                t.join()
                wakes.append((answered[0] - t0) * 1000)
            wakes.sort()
            print(f"blocking {name}: woke {wakes[len(wakes) // 2]:.1f} ms p50, {wakes[0]:.1f}-{wakes[-1]:.1f} ms "
                  "after the check update was sent")
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, nargs="*", default=[0, 30000])
    args = ap.parse_args()
    for n in args.instances:
        probe(n)


if __name__ == "__main__":
    main()
