"""What the startup load's decoded route commands cost in the main process, with and without sharing
equal field values (registry/consul/bulkload.py, `unpack`).

The load is built as the dump helper builds it (bulkload._load, its Consul reads replaced by synthetic
nodes shaped like bench/propagation.py's background instances: N instances, 3 per service, one
`urlprefix-/<svc>` tag each, on 100 nodes), then each figure is taken in a fresh process so the RSS is
not the build's freed memory reused:

    .venv/bin/python bench/load_sharing.py [instances]     # default 100,000

prints, for `plain` (msgspec's decode alone) and `shared` (bulkload.unpack): the RSS the decoded chunks
add, the size of their pickle, tracemalloc's size and block count for them, and the sharing pass's own
time (best of 5). Run from a checkout before the sharing (no bulkload._share), both are the old decode.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from registry.consul import bulkload  # noqa: E402

PER_SERVICE = 3
NODES = 100


def nodes(instances: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"Node": f"bgnode{n:03d}", "Address": "127.0.0.1", "Datacenter": "dc1",
                                     "Services": [], "Checks": []} for n in range(NODES)]
    for i in range(instances):
        svc = f"bg{i // PER_SERVICE:05d}"
        sid = f"{svc}-{i % PER_SERVICE}"
        n = out[i % NODES]
        n["Services"].append({"ID": sid, "Service": svc, "Address": f"127.{1 + i // 65536 % 254}.{i // 256 % 256}.{i % 256}",  # type: ignore[union-attr]
                              "Port": 9, "Tags": [f"urlprefix-/{svc}"]})
        n["Checks"].append({"CheckID": f"{sid}-chk", "Name": "bg", "Status": "passing", "ServiceID": sid})  # type: ignore[union-attr]
    return out


def build_chunks(instances: int) -> list[bytes]:
    synthetic = nodes(instances)
    bulkload.read_nodes = lambda target: (synthetic, bulkload.ReadStats(0, 0, NODES, 0.0))  # type: ignore[assignment]
    return bulkload.load(None, "urlprefix-", {"DC": "dc1"}, ("passing",), False).chunks  # type: ignore[arg-type]


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def decode(chunks: list[bytes], mode: str) -> list[list[bulkload.PackedService]]:
    if mode == "plain":
        return [bulkload._PACKED.decode(c) for c in chunks]
    return [bulkload.unpack(c) for c in chunks]


def child(path: str, mode: str, what: str) -> None:
    with open(path, "rb") as f:
        chunks = pickle.load(f)
    gc.disable()
    if what == "rss":
        before = rss_kb()
        kept = decode(chunks, mode)
        print(f"{mode}: decoded chunks add {(rss_kb() - before) / 1024:.1f} MB RSS"
              f" (pickled: {len(pickle.dumps(kept, protocol=5)) / 1e6:.1f} MB)")
    elif what == "trace":
        tracemalloc.start()
        kept = decode(chunks, mode)
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("filename")
        size, count = sum(s.size for s in stats), sum(s.count for s in stats)
        print(f"{mode}: tracemalloc {size / 1e6:.1f} MB in {count:,} blocks")
    elif hasattr(bulkload, "_share"):  # the pass alone, on freshly decoded chunks, best of 5
        best = float("inf")
        for _ in range(5):
            fresh = [bulkload._PACKED.decode(c) for c in chunks]
            t0 = time.perf_counter()
            for ps in fresh:
                bulkload._share(ps)
            best = min(best, time.perf_counter() - t0)
            del fresh
        n = sum(len(p.cmds or ()) for c in chunks for p in bulkload._PACKED.decode(c))
        print(f"sharing pass: {best * 1000:.1f} ms for {n:,} commands (best of 5)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    instances = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    chunks = build_chunks(instances)
    with tempfile.NamedTemporaryFile(suffix=".chunks", delete=False) as f:
        pickle.dump(chunks, f)
    try:
        for what in ("rss", "trace"):
            for mode in ("plain", "shared"):
                subprocess.run([sys.executable, __file__, "--child", f.name, mode, what], check=True)
        subprocess.run([sys.executable, __file__, "--child", f.name, "shared", "time"], check=True)
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    main()
