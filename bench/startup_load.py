"""The watcher's initial load against a Consul that is already running, in this process with the real
table (no proxy): ready time, RSS and `registry.last_dump`'s parts (issue 18, docs/benchmarks.md).

    python -m bench.startup_load 127.0.0.1:8500

Register the instances first (e.g. `bench.propagation.register_background`). Run it from two checkouts
back to back to compare two versions on one Consul.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from registry.consul.api import ConsulAPI  # noqa: E402
from registry.consul.watcher import ConsulWatcher  # noqa: E402
from router.table.state import RouterState  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


async def load(addr: str) -> dict[str, object]:
    state = RouterState()
    w = ConsulWatcher(ConsulAPI(addr), state.apply)
    t0 = time.perf_counter()
    await w._initial_sync()
    out = {"ready_s": round(time.perf_counter() - t0, 2), "rss_mb": round(rss_mb(), 1), "routes": len(state.table),
           "last_dump": w.status.last_dump}
    decoder = getattr(getattr(w, "_dumps", None), "decoder", None)
    if decoder is not None:
        decoder.close()
    return out


if __name__ == "__main__":  # the helper process is spawned: it imports this module, which must not run again
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(load(sys.argv[1]))))
