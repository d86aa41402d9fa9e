"""The startup load's own work, without Consul: its phases on saved per-node answers, CPU or instructions.

Why: on the shared machine the ready time of `bench/startup_load.py` moves 2-3x with the load, and even
Consul's CPU for the same reads varies 3x (its garbage collector). These are the router's and its
helper's pure steps on the same bytes (registry/consul/bulkload.py, router/table/builder.py): decoding
each node's two answers, regrouping per service, judging and building every service's route commands,
the reconcile baseline (digests), packing and unpacking them, and the first table build with its log
(`RouterState.apply`).

    python -m bench.startup_cost --save /tmp/nodes 127.0.0.1:8500    # save every node's two answers once
    python -m bench.startup_cost /tmp/nodes                            # CPU s per phase, all nodes
    python -m bench.startup_cost /tmp/nodes --src /path/to/other/checkout
    valgrind --tool=callgrind --instr-atstart=no python -m bench.startup_cost /tmp/nodes --every 20 \
        --phase build --callgrind   # instructions of one phase (callgrind_control toggles the counting)

The cyclic GC is off, as in the load itself (bulkload.gc_paused).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("decode", "entries", "build", "instances", "pack", "unpack", "table")


def save(addr: str, out: Path) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    names = [n["Node"] for n in json.loads(urlopen(f"http://{addr}/v1/catalog/nodes").read())]
    for name in names:
        (out / f"{name}.cat").write_bytes(urlopen(f"http://{addr}/v1/catalog/node/{name}").read())
        (out / f"{name}.health").write_bytes(urlopen(f"http://{addr}/v1/health/node/{name}").read())
    print(f"{len(names)} nodes saved in {out}")


def run(src: Path, nodes_dir: Path, nodes: int | None, every: int, only: str | None, callgrind: bool) -> None:
    sys.path.insert(0, str(src))
    import msgspec

    from registry.consul import bulkload
    from registry.consul.dump import Instances, dump_entries
    from registry.consul.services import build
    from router.table.state import RouterState

    names = sorted(p.with_suffix("") for p in nodes_dir.glob("*.cat"))[:nodes]
    raw = [(Path(f"{n}.cat").read_bytes(), Path(f"{n}.health").read_bytes()) for n in names]
    enc = msgspec.msgpack.Encoder()

    def pack(built):  # type: ignore[no-untyped-def]
        out, batch = [], []
        for name, b in built.items():
            batch.append(bulkload.PackedService(name, b.cmds, enc.encode(b.verdicts), b.errors, b.tagged,
                                                sum(1 for v in b.verdicts if v.healthy), len(b.verdicts)))
            if len(batch) >= bulkload.LOAD_CHUNK:
                out.append(enc.encode(batch))
                batch = []
        out.append(enc.encode(batch))
        return out

    steps = {
        "decode": lambda s: [bulkload._node(a, b) for a, b in raw],
        "entries": lambda s: dict(list(dump_entries([n for n in s["decode"] if n is not None], "urlprefix-")
                                       .items())[::every]),
        "build": lambda s: {n: build(es, "urlprefix-", {"DC": "dc1"}, ("passing",), False)
                            for n, es in s["entries"].items()},
        "instances": lambda s: Instances.of(s["entries"]),
        "pack": lambda s: pack(s["build"]),
        "unpack": lambda s: [p for c in s["pack"] for p in bulkload.unpack(c)],
        "table": lambda s: RouterState().apply({p.name: p.cmds for p in s["unpack"] if p.cmds}, []),
    }
    gc.disable()
    state: dict[str, object] = {}
    total = 0.0
    for phase in PHASES:
        measured = only is None or phase == only
        if callgrind and measured:
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=False)
        c0 = time.process_time()
        state[phase] = steps[phase](state)
        cpu = time.process_time() - c0
        if callgrind and measured:
            subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=False)
        if measured:
            total += cpu
            print(f"{phase:10s} {cpu:6.2f} s CPU", flush=True)
        if only == phase:
            break
    table = state.get("table")
    print(f"{'total':10s} {total:6.2f} s CPU ({len(raw)} nodes"
          + (f", {len(table)} targets)" if table is not None else ")"))  # type: ignore[arg-type]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="the saved answers (with --save: where to save them)")
    ap.add_argument("addr", nargs="?", help="--save: Consul's HTTP address")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--src", default=str(ROOT), help="the checkout whose code runs (default: this one)")
    ap.add_argument("--nodes", type=int, help="only the first N nodes")
    ap.add_argument("--every", type=int, default=1, help="only every Nth service (whole services, unlike --nodes)")
    ap.add_argument("--phase", choices=PHASES, help="measure only this phase (the ones before it run unmeasured)")
    ap.add_argument("--callgrind", action="store_true", help="toggle callgrind's counting around the measured part")
    a = ap.parse_args()
    if a.save:
        save(a.addr, Path(a.dir))
    else:
        run(Path(a.src), Path(a.dir), a.nodes, a.every, a.phase, a.callgrind)
