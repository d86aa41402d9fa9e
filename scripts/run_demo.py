"""`make run`: a working router on a fresh machine in one command.

Uses the Consul agent at registry.consul.addr (default localhost:8500) if one answers; otherwise starts
a local `consul agent -dev`. Starts two small demo backends that answer with their instance name,
registers them as `demo` with the tag `urlprefix-/demo` and an HTTP health check, starts the router on
:9999 and the UI on :9998, and prints what to try. Ctrl-C stops everything it started.
Extra router flags: `make run ARGS="-proxy.strategy rr"`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry.consul.api import consul_base_url  # noqa: E402
from router.config.settings import ConfigError, load  # noqa: E402
from tests.backends import Backend  # noqa: E402
from tests.consul_agent import ConsulAgent  # noqa: E402
from tests.consul_helpers import make_client  # noqa: E402


def consul_answers(addr: str) -> bool:
    try:
        return httpx.get(consul_base_url(addr) + "/v1/status/leader", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def local_url(addr: tuple[str, int]) -> str:
    """Where to reach a listener from this machine: a wildcard bind is reached on loopback."""
    host, port = addr
    return f"http://{'localhost' if host in ('', '0.0.0.0', '::') else host}:{port}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: list[str]) -> int:
    # Ctrl-C and SIGTERM both stop what we started, even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:  # the router's own loader: flags, FABIO_* / bare environment names and -cfg, as the router reads them
        cfg = load(args)
    except ConfigError as e:
        print(f"make run: {e}", file=sys.stderr)
        return 2
    addr = cfg["registry.consul.addr"]
    agent: ConsulAgent | None = None
    if consul_answers(addr):
        print(f"using the Consul agent at {addr}")
    else:
        print(f"no Consul at {addr}: starting a local dev agent ...")
        agent = ConsulAgent()
        agent.start()
        addr = agent.addr
        print(f"consul dev agent on {addr} (UI: http://{addr}/ui)")
    host, port = consul_base_url(addr).split("://")[1].rsplit(":", 1)
    client = make_client(int(port), host=host)

    backends = [Backend(f"demo-{i}").start() for i in (1, 2)]
    for b in backends:
        client.agent.service.register(
            "demo", service_id=b.name, address="127.0.0.1", port=b.port, tags=["urlprefix-/demo", "demo"],
            check={"HTTP": f"http://127.0.0.1:{b.port}/health", "Interval": "2s", "Timeout": "1s"},
        )
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "-registry.consul.addr", addr, "-registry.consul.register.enabled",
         "false", *args],
        cwd=ROOT,
    )
    ui, proxy = local_url(cfg["ui.addr"]), local_url(cfg["proxy.addr"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and router.poll() is None:
        try:
            if sum(r["service"] == "demo" for r in httpx.get(ui + "/api/routes", timeout=1).json()) == len(backends):
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    else:
        print("the demo route did not appear within 60 s; see the router's log above")
    print(
        "\nThe router is up and routes /demo to two instances.\n"
        f"  curl -s {proxy}/demo        # answered by demo-1 or demo-2\n"
        f"  open {ui}/routes  # the routing table\n"
        f"  curl -s '{ui}/api/routes?raw'\n"
        "Register your own service with a tag like urlprefix-/myapp and a passing health check.\n"
        "Ctrl-C stops the router, the demo backends"
        + (" and the Consul agent." if agent else ".")
        + "\n",
        flush=True,
    )
    try:
        while router.poll() is None:
            time.sleep(0.5)
        print(f"router exited with status {router.returncode}")
        return router.returncode or 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        if router.poll() is None:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(10)
            except subprocess.TimeoutExpired:
                router.kill()
        for b in backends:
            try:
                client.agent.service.deregister(b.name)
            except Exception:  # noqa: BLE001 - the agent may already be gone
                pass
            b.stop()
        if agent is not None:
            agent.stop()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
