"""How long a dev agent takes to open its HTTP port with N services (TTL checks) in a service-definition
file (issue 18: why 30,000 agent-registered instances were not measured; docs/benchmarks.md).

    CONSUL=/path/to/consul python -m bench.agent_startup 3000 10000 [--no-checks] [--limit 1200]

Prints one JSON line per N: seconds until the HTTP port accepts a connection, and until every check is
passing in the catalog (None when not reached within --limit).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.propagation_patterns import agent_services_file  # noqa: E402
from tests.consul_agent import consul_binary, free_ports  # noqa: E402


def probe(n: int, checks: bool, limit: float, tmp: Path) -> dict[str, object]:
    f = agent_services_file(n, tmp / f"services-{n}.json")
    if not checks:
        doc = json.loads(f.read_text())
        for s in doc["services"]:
            s.pop("check")
        f.write_text(json.dumps(doc))
    http, lan, wan, srv = free_ports(4)
    args = [consul_binary(), "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", f"-http-port={http}",
            "-dns-port=-1", f"-serf-lan-port={lan}", f"-serf-wan-port={wan}", f"-server-port={srv}",
            "-grpc-port=-1", "-node=probe", "-log-level=warn", "-hcl", "disable_update_check = true",
            f"-config-file={f}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    opened = synced = None
    try:
        while time.monotonic() - t0 < limit and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", http), timeout=1).close()
                opened = round(time.monotonic() - t0, 1)
                break
            except OSError:
                time.sleep(0.5)
        want = n if checks else 0
        while opened is not None and time.monotonic() - t0 < limit:
            try:
                got = len(httpx.get(f"http://127.0.0.1:{http}/v1/health/state/passing", timeout=60,
                                    trust_env=False).json())
                if got >= want:
                    synced = round(time.monotonic() - t0, 1)
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"services": n, "checks": checks, "http_open_s": opened, "catalog_synced_s": synced}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("services", nargs="+", type=int)
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--limit", type=float, default=1200.0)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        for n in a.services:
            print(json.dumps(probe(n, not a.no_checks, a.limit, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
