"""Graceful shutdown on SIGTERM, and no resend of a request that already reached an upstream."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.backends import Backend
from tests.router_proc import RouterProc


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend("s1").start()
    yield b
    b.stop()


def test_sigterm_drains(backend: Backend) -> None:
    routes = f"route add svc /plain http://127.0.0.1:{backend.port}/"
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.shutdownwait", "2s")
    with r:
        assert r.proc is not None
        results: dict[str, int] = {}

        def slow() -> None:
            results["slow"] = httpx.get(r.url + "/plain/slow?s=3", timeout=20).status_code

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 5
        while not any(q.path.startswith("/plain/slow") for q in backend.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        r.proc.send_signal(signal.SIGTERM)
        try:
            health = [httpx.get(r.ui + "/health", timeout=5).status_code for _ in range(3)]
        except httpx.HTTPError as e:
            raise AssertionError(r.output()) from e
        assert 503 in health  # at once, long before proxy.shutdownwait ends
        assert httpx.get(r.url + "/plain/new", timeout=5).status_code == 200  # still serving
        assert r.proc.poll() is None
        t.join(20)
        assert results == {"slow": 200}  # in flight past the end of the wait, and still finished
        assert r.proc.wait(15) == 0


class Closer:
    """An upstream that accepts, reads the request head, and hangs up without answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            data = b""
            with conn:
                conn.settimeout(5)
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk


def test_post_that_reached_an_upstream_is_not_resent(backend: Backend) -> None:
    closer = Closer()
    routes = (f"route add svc /c http://127.0.0.1:{closer.port}/\n"
              f"route add svc /c http://127.0.0.1:{backend.port}/")
    before = backend.hits
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.strategy", "rr") as r:
        statuses = [httpx.post(r.url + "/c/echo", content=b"x" * 200_000, timeout=10).status_code for _ in range(4)]
    closer.sock.close()
    assert sorted(statuses) == [200, 200, 502, 502]  # rr: half went to the closer
    assert closer.connections == 2  # one attempt per failed POST: it had been (partly) sent
    assert backend.hits - before == 2  # and the failed ones were not resent to the other instance
