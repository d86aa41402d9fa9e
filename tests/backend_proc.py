"""Backends that misbehave like real processes, and a paced load generator (issue 7 tests).

- BackendProc: a backend in its own process (`python -m tests.backend_proc PORT NAME`), so a test can
  SIGKILL it and the kernel refuses further connections, exactly as when a real instance dies.
- Blackhole: a loopback listener whose accept queue is full and never drained; on Linux further SYNs are
  dropped, so connect() hangs until the caller's dial timeout.
- Staller: accepts connections, reads the request, never answers.
- Load: N threads sending GETs at a fixed total rate for as long as it runs; counts failures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.router_proc import free_port

ROOT = Path(__file__).resolve().parent.parent


class BackendProc:
    """An aiohttp backend in a child process that answers every request with its name."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.fixed = port is not None  # a port the test chose: never swapped for another
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> BackendProc:
        """Start the process without waiting for it (several can then start at once: wait() each)."""
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.backend_proc", str(self.port), self.name],
                                     cwd=ROOT, start_new_session=True)
        return self

    def wait(self, timeout: float = 90.0) -> BackendProc:
        """Until it answers with its name. `timeout` is a hang guard, not a bound: a loaded machine may take
        many seconds to start a Python process. A process that exits first (its free port was taken by
        someone else meanwhile) is started again on another port."""
        deadline = time.monotonic() + timeout
        restarts = 0
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                if self.fixed or restarts >= 3:
                    raise RuntimeError(f"backend process {self.name} exited with {self.proc.returncode}")
                restarts += 1
                self.port = free_port()
                self.spawn()
                continue
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/", timeout=5).text.strip() == self.name:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"backend process {self.name} did not answer within {timeout:.0f}s (hang guard)")

    def start(self) -> BackendProc:
        return self.spawn().wait()

    def kill(self) -> None:
        """SIGKILL: no deregistration, no goodbye; the port refuses connections from now on."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class Blackhole:
    """A listener with backlog 0 whose queue is filled and never accepted: later connects time out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        # Fill the accept queue: each connect that completes takes a slot; stop when one times out.
        for _ in range(8):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except OSError:
                s.close()
                break
            self.fillers.append(s)

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


class Staller:
    """Accepts connections and reads from them, never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(c)

    def close(self) -> None:
        self._stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


class Load:
    """GETs `url` at `rate` requests/s in total from `threads` threads until stop(); records outcomes.

    Each thread keeps its own schedule (start + k * period), so a slow answer is followed by a catch-up
    burst rather than a lower rate, as an open-loop client would do.
    """

    def __init__(self, url: str, rate: float = 300.0, threads: int = 12, timeout: float = 10.0) -> None:
        self.url, self.rate, self.threads, self.timeout = url, rate, threads, timeout
        self.outcomes: Counter[str] = Counter()
        self.bodies: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.started = self.stopped = 0.0

    def _record(self, outcome: str, body: str = "") -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if outcome == "200":
                self.bodies[body] += 1
            else:
                self.failures.append((time.time(), outcome))

    def _worker(self, offset: float) -> None:
        period = self.threads / self.rate
        nxt = time.monotonic() + offset
        with httpx.Client(timeout=self.timeout, trust_env=False) as c:
            while not self._stop.is_set():
                delay = nxt - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                nxt += period
                try:
                    r = c.get(self.url)
                    self._record(str(r.status_code), r.text.strip() if r.status_code == 200 else "")
                except httpx.HTTPError as e:
                    self._record(type(e).__name__)

    def start(self) -> Load:
        self.started = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._worker, args=(i / self.rate,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)
        self.stopped = time.monotonic()
        return self

    @property
    def achieved(self) -> float:
        """Requests per second actually sent (the schedule slips when the machine cannot keep up)."""
        return self.total / max((self.stopped or time.monotonic()) - self.started, 1e-9)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.total - self.outcomes["200"]


def _serve(port: int, name: str) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=f"{name}\n", headers={"X-Backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
