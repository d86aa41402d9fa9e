"""Start the real router as a subprocess (`python -m router ...`) on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.consul_agent import free_ports
from tests.consul_helpers import uid

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_ports(1)[0]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until something accepts on 127.0.0.1:`port` (a server started in another process); raises if `proc`
    exits first or nothing listens after `timeout` seconds (a hang guard, not a bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f}s")


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


class RouterProc:
    def __init__(self, *flags: str, wait_ready: bool = True, env: dict[str, str] | None = None,
                 ui_ca: str | None = None) -> None:
        self.proxy_port = free_port()
        self.ui_port = free_port()
        self.flags = [
            "-proxy.addr", f"127.0.0.1:{self.proxy_port}",
            "-ui.addr", f"127.0.0.1:{self.ui_port}",
            "-registry.consul.register.enabled", "false",
            # one process unless a test asks for more (a later flag wins): tests assert exact
            # round-robin counts, which hold per process; tests/test_workers.py covers several
            "-proxy.workers", "1",
            *flags,
        ]
        self.wait_ready = wait_ready
        self.ui_ca = ui_ca  # the UI serves HTTPS (ui.addr with cs=): readiness is asked over TLS, trusting this CA
        self.env = {**os.environ, **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="router-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def ui(self) -> str:
        return f"{'https' if self.ui_ca else 'http'}://127.0.0.1:{self.ui_port}"

    def start(self) -> RouterProc:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", *self.flags],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        deadline = time.monotonic() + 60  # a hang guard, not a bound: a loaded machine starts slowly
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = httpx.get(self.ui + "/health", timeout=1, verify=self._ui_verify())
                if r.status_code == 200 or (not self.wait_ready and r.status_code == 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"router not ready within 60s:\n{self.output()}")

    def _ui_verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ui_ca) if self.ui_ca else True

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @classmethod
    def static(cls, routes: str, *flags: str) -> RouterProc:
        """A router on static routes (no Consul): for tests of the proxy itself."""
        return cls("-registry.backend", "static", "-registry.static.routes", routes, *flags)

    @classmethod
    def consul(cls, addr: str, *flags: str) -> RouterProc:
        """A router on the Consul at `addr`, with a KV path of its own (tests share one agent) and no
        no-route page watch."""
        return cls("-registry.consul.addr", addr, "-registry.consul.kvpath", f"/t-{uid()}/config",
                   "-registry.consul.noroutehtmlpath", "", *flags)

    def __enter__(self) -> RouterProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
