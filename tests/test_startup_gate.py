"""The proxy listeners open only once their process has a routing table (router/run/gate.py).

Requests fired from the moment the port opens never meet a process without a table ("routing table not
loaded yet"); a second router starting on the same SO_REUSEPORT port takes no connection while it has no
table (a rolling restart); with Consul down at startup the port opens after `registry.timeout`, says why
in the log, and answers 503 until a table loads.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import make_client, register, uid
from tests.router_proc import ROOT, RouterProc, free_port

NOT_LOADED = b"routing table not loaded yet"
HANG_GUARD = 60.0  # seconds: only a hang fails on it, never a slow start


def get(port: int, path: str = "/gate") -> bytes | None:
    """One request on a fresh connection (so SO_REUSEPORT spreads them over the workers); None if the
    connection is refused (nothing listens yet)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return None
    with s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def fire_from_open(port: int, proc: subprocess.Popen, count: int) -> list[bytes]:
    """Try to connect until the port opens, then send `count` requests, each on a new connection."""
    deadline = time.monotonic() + HANG_GUARD
    answers: list[bytes] = []
    while len(answers) < count:
        assert proc.poll() is None, "the router exited"
        assert time.monotonic() < deadline, f"hang guard: {len(answers)} answers"
        data = get(port)
        if data is None:
            assert not answers, "the port closed again after it had opened"
            time.sleep(0.005)
            continue
        answers.append(data)
    return answers


@pytest.mark.consul
@pytest.mark.parametrize("workers", ["1", "2"])
def test_requests_from_the_first_moment_meet_a_table(consul_agent, backends, workers: str) -> None:
    """Started against a real Consul with a routed service: every answer from the moment the port accepts
    is the instance's, none is the 503 of a process still waiting for its table."""
    b = Backend(f"gate-{uid()}").start()
    backends.append(b)
    name = f"gate-{uid()}"
    register(make_client(consul_agent.port), name, f"{name}-1", b.port, tags=["urlprefix-gate/"])
    r = RouterProc("-registry.consul.addr", f"127.0.0.1:{consul_agent.port}", "-proxy.workers", workers)
    r.proc = subprocess.Popen([sys.executable, "-m", "router", *r.flags], cwd=ROOT, stdout=r.log,
                              stderr=subprocess.STDOUT, env=r.env, start_new_session=True)
    try:
        answers = fire_from_open(r.proxy_port, r.proc, 300)
        assert not [a for a in answers if NOT_LOADED in a], r.output()
        assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(f"{b.name}\n".encode()) for a in answers)
        assert b.hits == 300
        if workers == "2":  # both workers took connections, and each had its table for every one
            ws = httpx.get(r.ui + "/api/status", timeout=10).json()["workers"]
            assert len(ws) == 2 and all(w["listening"] for w in ws)
    finally:
        r.stop()


@pytest.mark.consul
def test_a_second_router_without_a_table_takes_no_connections(consul_agent, backends) -> None:
    """A rolling restart: a new router on the same SO_REUSEPORT port whose registry has given it no table
    (here its Consul does not answer) binds the port but never listens, so every connection still goes
    to the router that has its table; the kernel would otherwise give it about half of them."""
    b = Backend(f"gate-{uid()}").start()
    backends.append(b)
    name = f"gate-{uid()}"
    register(make_client(consul_agent.port), name, f"{name}-1", b.port, tags=["urlprefix-gate/"])
    with RouterProc("-registry.consul.addr", f"127.0.0.1:{consul_agent.port}", "-proxy.workers", "2") as old:
        assert get(old.proxy_port) is not None
        new = RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", "-proxy.workers", "2",
                         "-proxy.addr", f"127.0.0.1:{old.proxy_port}", "-registry.timeout", "10m",
                         wait_ready=False)
        with new:  # its UI answers only once both its workers have bound the shared port
            ws = httpx.get(new.ui + "/api/status", timeout=10).json()["workers"]
            assert len(ws) == 2 and all(w["alive"] and not w.get("listening") for w in ws)
            answers = [get(old.proxy_port) for _ in range(200)]
            assert all(a is not None and a.startswith(b"HTTP/1.1 200") for a in answers), \
                [a for a in answers if a is None or not a.startswith(b"HTTP/1.1 200")][:3]
            assert httpx.get(new.ui + "/health", timeout=10).status_code == 503
        assert "could not bind" not in new.output() and "Address already in use" not in new.output()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_consul_down_at_startup_opens_after_registry_timeout(workers: str) -> None:
    """No Consul: the UI answers at once, the proxy port refuses until `registry.timeout` passed, the log
    says why it then opens, and the open port answers 503 while the registry is still retried. Refusals
    count only once the UI answers (every proxy socket is bound by then); 5 s leaves a loaded machine time
    to start the UI well inside the bound."""
    r = RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", "-registry.timeout", "5s",
                   "-proxy.workers", workers, wait_ready=False)
    opened = "no routing table after 5s (registry.timeout)"
    with r:
        refused = 0  # refusals seen while the log did not yet say the listeners open
        deadline = time.monotonic() + HANG_GUARD
        while True:
            assert time.monotonic() < deadline, r.output()
            said = opened in r.output()  # read before the try: a refusal then is one before the opening
            data = get(r.proxy_port, "/x")
            if data is None:
                refused += not said
                time.sleep(0.02)
                continue
            assert opened in r.output(), "the port accepted before the log said why"
            break
        assert refused > 0, "the port never refused before registry.timeout"
        assert data.startswith(b"HTTP/1.1 503") and NOT_LOADED in data
        assert "last registry error: initial sync" in r.output()
        health = httpx.get(r.ui + "/health", timeout=10)
        assert health.status_code == 503 and "not loaded" in health.text
        assert r.proc is not None and r.proc.poll() is None  # still running, still retrying (fabio exits)


def test_static_routes_open_at_once_and_zero_timeout_opens_without_table() -> None:
    """Static routes are a table: the port opens with them. registry.timeout=0 opens before any table."""
    with RouterProc.static("route add s / http://127.0.0.1:1/") as r:
        assert "first routing table loaded (1 routes): the proxy listeners open" in r.output()
        assert get(r.proxy_port) is not None
    with RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", "-registry.timeout", "0",
                    wait_ready=False) as r:
        deadline = time.monotonic() + HANG_GUARD
        while (data := get(r.proxy_port)) is None:
            assert time.monotonic() < deadline, r.output()
            time.sleep(0.02)
        assert data.startswith(b"HTTP/1.1 503") and NOT_LOADED in data
        assert "registry.timeout=0: the proxy listeners open before the first routing table" in r.output()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_edge_listeners_are_bound_but_closed_until_a_table(workers: str) -> None:
    """The gRPC (the HTTP server's other listeners, HTTPS alike) and TCP listeners follow the same rule:
    bound at start (nobody else can take the port) but refusing connections while there is no table."""
    grpc_port, tcp_port = free_port(), free_port()
    r = RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", "-registry.timeout", "10m",
                   "-proxy.workers", workers, wait_ready=False)
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port};proto=http,127.0.0.1:{grpc_port};proto=grpc,"
                               f"127.0.0.1:{tcp_port};proto=tcp"]
    with r:  # the UI answers once every proxy socket is bound (in this process, or in both workers)
        if workers == "2":
            ws = httpx.get(r.ui + "/api/status", timeout=10).json()["workers"]
            assert len(ws) == 2 and not any(w["listening"] for w in ws)
        for port in (r.proxy_port, grpc_port, tcp_port):
            assert get(port) is None, port  # refused: nothing listens
            with socket.socket() as s, pytest.raises(OSError):  # but the port is taken
                s.bind(("127.0.0.1", port))
        assert httpx.get(r.ui + "/health", timeout=10).status_code == 503
        assert r.proc is not None and r.proc.poll() is None


def test_a_proxy_protocol_ui_answers_before_the_first_table() -> None:
    """`pxyproto=true` on ui.addr is accepted by the edge's acceptor (router/run/edge.py `serve_ui`), beside the
    proxy listeners but not held with them: /health answers (503) while there is no table yet."""
    r = RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", "-registry.timeout", "10m", wait_ready=False)
    r.flags += ["-ui.addr", f"127.0.0.1:{r.ui_port};pxyproto=true"]
    with r:
        status = None
        guard = time.monotonic() + 30  # a hang guard: the UI answers within a second or two
        while status is None and time.monotonic() < guard:
            try:
                status = httpx.get(r.ui + "/health", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 503
        assert get(r.proxy_port) is None  # the proxy port still refuses
