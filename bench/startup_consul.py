"""A loaded Consul kept running, for many startup measurements against the same data (issue 18).

Loading 100,000 catalog-registered instances takes minutes (`/v1/txn`, bench.propagation's
`register_background`): measuring each read strategy or checkout against a fresh agent would spend most
of the session loading. This starts one `consul agent -dev` as the patterns benchmark does, loads it,
prints its address and pid as JSON (and writes them to `--info`), and keeps it until interrupted:

    CONSUL=... python -m bench.startup_consul 100000 --info /tmp/consul100k.json &
    python -m bench.startup_load ADDR PID          # from each checkout, as often as needed
    python -m bench.startup_reads ADDR PID         # Consul's answer time per read strategy

SIGTERM or SIGINT stops the agent. With `GODEBUG=gctrace=1` in the environment the agent logs every
garbage collection of its Go runtime (with its CPU time) to its log (`log` in the info).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.propagation_patterns import start_consul  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("instances", type=int)
    ap.add_argument("--info", type=Path, help="also write {addr, pid, setup_s, log} here")
    ap.add_argument("--server", action="store_true",
                    help="a single server with a data directory (Raft log on disk, snapshots, compact JSON) "
                         "instead of `-dev` (everything in memory, pretty-printed JSON), as in production")
    a = ap.parse_args()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with tempfile.TemporaryDirectory(prefix="bench-startup-consul-") as tmp:
        agent, setup_s = start_consul("catalog", a.instances, Path(tmp), Path(tmp) / "data" if a.server else None)
        try:
            info = {"addr": agent.addr, "pid": agent.pid, "setup_s": round(setup_s, 1), "instances": a.instances,
                    "log": str(agent.log_path), "mode": agent.mode}
            print(json.dumps(info), flush=True)
            if a.info:
                a.info.write_text(json.dumps(info))
            while not stop and agent.is_running():
                time.sleep(0.5)
        finally:
            agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
