"""Graceful shutdown on SIGTERM, and no resend of a request that already reached an upstream."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.backends import Backend
from tests.raw_upstream import RawUpstream
from tests.router_proc import RouterProc, pid_alive


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend("s1").start()
    yield b
    b.stop()


SHUTTING_DOWN = "shutting down: /health reports 503"  # logged right after the main process sets its flag


def wait_for(cond, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def health(r: RouterProc) -> int:
    try:
        return httpx.get(r.ui + "/health", timeout=5).status_code
    except httpx.HTTPError as e:
        raise AssertionError(r.output()) from e


def first_health_after_sigterm(r: RouterProc, send_signal) -> int:  # type: ignore[no-untyped-def]
    """Send SIGTERM, then return the first /health answer that can only have come after it was handled.

    A probe sent right after kill() races the router's event loop, which has not necessarily run its
    signal handler yet; a 200 then says nothing. So the probe waits for the log line the main process
    writes right after it sets the shutting-down flag (same loop step, no await in between): from then
    on every /health must be 503. Before the signal it was 200, so a 503 is the flag's doing.
    """
    assert health(r) == 200
    assert SHUTTING_DOWN not in r.output()
    send_signal()
    wait_for(lambda: SHUTTING_DOWN in r.output(), "the router to log that it got SIGTERM")
    return health(r)


def test_sigterm_drains(backend: Backend) -> None:
    """One process: /health is 503 at once, new requests are still served during proxy.shutdownwait, and
    a request in flight past the end of the wait (held by its upstream until the port has closed)
    completes; the exit code is 0."""
    holder = Holder()
    routes = (f"route add svc /plain/held http://127.0.0.1:{holder.port}/\n"
              f"route add svc /plain http://127.0.0.1:{backend.port}/")
    r = RouterProc.static(routes, "-proxy.shutdownwait", "4s")
    try:
        with r:
            assert r.proc is not None
            results: dict[str, object] = {}

            def held() -> None:
                resp = httpx.get(r.url + "/plain/held", timeout=120)
                results["held"] = (resp.status_code, resp.text)

            t = threading.Thread(target=held)
            t.start()
            wait_for(lambda: holder.waiting, "the held request upstream", timeout=60)
            assert first_health_after_sigterm(r, lambda: r.proc.send_signal(signal.SIGTERM)) == 503
            assert health(r) == 503  # and it stays so
            assert httpx.get(r.url + "/plain/new", timeout=30).status_code == 200  # still serving
            wait_for(lambda: refused(r.proxy_port), "the proxy port to close after proxy.shutdownwait", timeout=60)
            assert t.is_alive() and results == {} and r.proc.poll() is None
            holder.release.set()
            t.join(60)
            assert results == {"held": (200, "held\n")}  # in flight past the end of the wait, and still finished
            assert r.proc.wait(60) == 0
    finally:
        holder.release.set()
        holder.sock.close()


def _worker_pids(r: RouterProc) -> list[int]:
    return [w["pid"] for w in httpx.get(r.ui + "/api/status", timeout=5).json()["workers"]]


def _worker_requests(r: RouterProc) -> dict[int, int]:
    return {w["pid"]: w["requests"] for w in httpx.get(r.ui + "/api/status", timeout=5).json()["workers"]}


@pytest.mark.parametrize("target", ["main", "group"])
def test_sigterm_drains_with_two_workers(backend: Backend, target: str) -> None:
    """-proxy.workers 2 (production runs one worker per core). SIGTERM to the main process only (as
    `docker stop` sends it to PID 1) or to the whole process group (systemd, Ctrl-C in a terminal): /health
    is 503 at once, both workers keep serving new connections during proxy.shutdownwait, a request in
    flight past the end of the wait completes, and every process exits 0.

    Nothing here is timed: the request in flight is held by its upstream until the test has seen the wait
    end (the port refuses new connections), and the workers' service during the wait is read from their
    reports. The wait itself is the feature under test; 8 s leaves a loaded machine room to send a few
    dozen requests in it."""
    holder = Holder()
    routes = (f"route add svc /w2/{target}/held http://127.0.0.1:{holder.port}/\n"
              f"route add svc /w2 http://127.0.0.1:{backend.port}/")
    r = RouterProc.static(routes, "-proxy.workers", "2", "-proxy.shutdownwait", "8s")
    try:
        with r:
            proc = r.proc
            assert proc is not None
            pids = _worker_pids(r)
            assert len(pids) == 2
            results: dict[str, object] = {}

            def held() -> None:
                resp = httpx.get(r.url + f"/w2/{target}/held", timeout=120)
                results["held"] = (resp.status_code, resp.text)

            t = threading.Thread(target=held)
            t.start()
            wait_for(lambda: holder.waiting, "the held request upstream", timeout=60)
            # the workers count a request when it starts: once the held one is reported, any later
            # increase is a request sent after the signal
            def reported_held() -> dict[int, int] | None:
                counts = _worker_requests(r)
                return counts if sum(counts.values()) == 1 else None

            before = wait_for(reported_held, "the workers' reports of the held request", timeout=60)

            def sigterm() -> None:
                if target == "main":
                    proc.send_signal(signal.SIGTERM)
                else:  # RouterProc starts the router in its own session: its pid is the group id
                    os.killpg(proc.pid, signal.SIGTERM)

            assert first_health_after_sigterm(r, sigterm) == 503

            # During the wait: fresh connections (the kernel spreads them over both workers' sockets) are
            # all served, until each worker has served some of them since the signal (reports every 0.5 s).
            sent = 0
            while True:
                for _ in range(10):
                    resp = httpx.get(r.url + "/w2/new", headers={"Connection": "close"}, timeout=30)
                    assert (resp.status_code, resp.text) == (200, "s1\n")
                    sent += 1
                after = _worker_requests(r)
                if all(after[p] > before[p] for p in pids):
                    break
                assert sent < 500, f"a worker stopped serving during the wait: {before} -> {after}"
                time.sleep(0.1)
            assert health(r) == 503

            # the wait ends: the workers close their listeners, the held request is still in flight
            wait_for(lambda: refused(r.proxy_port), "the proxy port to close after proxy.shutdownwait", timeout=60)
            assert t.is_alive() and results == {} and proc.poll() is None
            holder.release.set()
            t.join(60)
            assert results == {"held": (200, "held\n")}  # in flight past the end of the wait, and still finished
            assert proc.wait(60) == 0
            log = r.output()
            for pid in pids:
                assert f"(pid {pid}) exited with 0" in log, log
                assert not pid_alive(pid)
    finally:
        holder.release.set()
        holder.sock.close()


def refused(port: int) -> bool:
    """Whether a new connection to `port` is refused (nothing listens); one that is accepted is closed."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class Holder(RawUpstream):
    """An upstream that reads a request head, then holds its answer until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0
        super().__init__()

    def _serve(self, conn: socket.socket, n: int) -> None:
        with conn:
            if self.read_head(conn) is None:
                return
            self.waiting += 1
            self.release.wait(120)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nheld\n")


class Closer(RawUpstream):
    """An upstream that accepts, reads the request head, and hangs up without answering."""

    def _serve(self, conn: socket.socket, n: int) -> None:
        with conn:
            conn.settimeout(5)
            self.read_head(conn)  # then hang up, whether it came or not


def test_post_that_reached_an_upstream_is_not_resent(backend: Backend) -> None:
    closer = Closer()
    routes = (f"route add svc /c http://127.0.0.1:{closer.port}/\n"
              f"route add svc /c http://127.0.0.1:{backend.port}/")
    before = backend.hits
    with RouterProc("-registry.backend", "static", "-registry.static.routes", routes, "-proxy.strategy", "rr") as r:
        statuses = [httpx.post(r.url + "/c/echo", content=b"x" * 200_000, timeout=10).status_code for _ in range(4)]
    closer.sock.close()
    # rr sends the first or second to the closer; after that the picker may avoid the instance that failed
    failed = statuses.count(502)
    assert failed >= 1 and statuses.count(200) == 4 - failed, statuses
    assert closer.connections == failed  # one attempt per failed POST: it had been (partly) sent
    assert backend.hits - before == 4 - failed  # and the failed ones were not resent to the other instance


class Dropper(RawUpstream):
    """An upstream that answers the first request on each connection (keep-alive), then reads the next
    request's head and hangs up without answering: a pooled connection that dies under a request."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, str]] = []  # (connection number, "METHOD /path") of every request seen
        super().__init__()

    def _head(self, conn: socket.socket, n: int, data: bytes) -> bytes | None:
        got = self.read_head(conn, data)
        if got is None:
            return None
        head, rest = got
        self.heads.append((n, " ".join(head.split(b"\r\n")[0].decode().split(" ")[:2])))
        return rest

    def _serve(self, conn: socket.socket, n: int) -> None:
        with conn:
            conn.settimeout(10)
            if self._head(conn, n, b"") is None:
                return
            body = b"conn %d" % n
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            self._head(conn, n, b"")  # the next request on this connection: close without a word


def test_bodiless_post_on_a_dead_pooled_connection_is_502_not_resent() -> None:
    """The pooled connection dies after the POST head was written: the upstream may have acted on it, so
    the proxy answers 502 instead of sending it again (Go's net/http does the same). A GET in the same
    spot is sent once more on a fresh connection and answered."""
    d = Dropper()
    with RouterProc.static(f"route add svc /d http://127.0.0.1:{d.port}/") as r:
        with httpx.Client(timeout=10) as c:
            assert c.get(r.url + "/d/a").text == "conn 1"  # connection 1 now idle in the router's pool
            post = c.post(r.url + "/d/order")  # no body (Content-Length: 0)
            assert post.status_code == 502, post.text
            assert c.get(r.url + "/d/b").text == "conn 2"  # the dead one was not pooled again
            assert c.get(r.url + "/d/c").text == "conn 3"  # connection 2 dropped it: resent on a fresh one
    d.sock.close()
    assert [h for h in d.heads if h[1] == "POST /d/order"] == [(1, "POST /d/order")]  # seen exactly once
    assert d.heads == [(1, "GET /d/a"), (1, "POST /d/order"), (2, "GET /d/b"), (2, "GET /d/c"), (3, "GET /d/c")]
