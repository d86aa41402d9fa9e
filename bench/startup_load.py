"""The watcher's initial load against a Consul that is already running, in this process with the real
table (no proxy): ready time, RSS and `registry.last_dump`'s parts (issue 18, docs/benchmarks.md).

    python -m bench.startup_load 127.0.0.1:8500 [CONSUL_PID]

CPU seconds beside the wall time (the machine is shared, so they are the figures to compare): the
router's own (`cpu_s`, every thread), its helper processes' (`helper_cpu_s`) and, given its pid, the
Consul agent's (`consul_cpu_s`). `ready_s` is until the initial sync returned; `serving_s` adds what the
watcher does next before its event loop serves anything (the GC's handling of the load's objects,
`gc_s`). Register the instances first (e.g. `bench.propagation.register_background`). Run it from two checkouts
back to back to compare two versions on one Consul.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from registry.consul import bulkload  # noqa: E402
from registry.consul.api import ConsulAPI  # noqa: E402
from registry.consul.watcher import ConsulWatcher  # noqa: E402
from router.table.state import RouterState  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def cpu_of(pid: int) -> float:
    """user + system CPU seconds of a process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    multiprocessing.active_children()  # joins the helpers that exited, so their CPU is counted
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def load(addr: str, consul_pid: int | None = None) -> dict[str, object]:
    state = RouterState()
    c0 = time.process_time()
    k0 = cpu_of(consul_pid) if consul_pid else 0.0
    w = ConsulWatcher(ConsulAPI(addr), state.apply)
    t0 = time.perf_counter()
    after_load = getattr(ConsulWatcher, "after_load", None)  # older checkouts: collect, then freeze
    with getattr(bulkload, "gc_paused", contextlib.nullcontext)():  # as ConsulWatcher.run does (older checkouts: none)
        await w._initial_sync()
        g0, gc0 = time.perf_counter(), time.process_time()
        if after_load is not None:
            after_load()
    # what ConsulWatcher.run does next, before its event loop serves anything
    collected = None if after_load is not None else gc.collect()
    gc.freeze()
    g1 = time.perf_counter()
    out: dict[str, object] = {"ready_s": round(g0 - t0, 2), "gc_s": round(g1 - g0, 2),
                              "gc_cpu_s": round(time.process_time() - gc0, 2), "serving_s": round(g1 - t0, 2),
                              "gc_collected": collected, "rss_mb": round(rss_mb(), 1),
                              "cpu_s": round(time.process_time() - c0, 2)}
    if consul_pid:
        out["consul_cpu_s"] = round(cpu_of(consul_pid) - k0, 2)
    out.update(routes=len(state.table), last_dump=w.status.last_dump)
    decoder = getattr(getattr(w, "_dumps", None), "decoder", None)
    if decoder is not None:
        decoder.close()
    deadline = time.monotonic() + 60
    while multiprocessing.active_children() and time.monotonic() < deadline:  # the helpers exit (and free their heap)
        await asyncio.sleep(0.1)
    out["helper_cpu_s"] = round(children_cpu(), 2)
    return out


if __name__ == "__main__":  # the helper process is spawned: it imports this module, which must not run again
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(load(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))))
