"""fabio's `rt=`/`wt=` on HTTP and HTTPS listeners (Go's http.Server ReadTimeout/WriteTimeout), through the
real router: a request whose head or body does not arrive within rt, or whose answer is not written within
wt (a slow instance), loses its connection without an answer; requests within both are served, on the
same keep-alive connection too. Clients are raw sockets and Python's ssl; the waits are hang guards only.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
import trustme

from tests.backends import Backend
from tests.router_proc import RouterProc, free_port

GUARD = 8.0  # seconds a test waits for the router to act before it counts as "never"


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend("b1").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def router(backend: Backend, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, int]]:
    """(plain port with rt/wt, TLS port with rt/wt, plain port without them)."""
    tmp = tmp_path_factory.mktemp("timeouts")
    leaf = ca.issue_cert("t.example.com")
    (tmp / "site.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    tport, free = free_port(), free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add b / http://127.0.0.1:{backend.port}/", env={"ROUTER_LISTENER": "own"})
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port};rt=1s;wt=1s,127.0.0.1:{tport};cs=c;rt=1s;wt=1s,"
                               f"127.0.0.1:{free}", "-proxy.cs", f"cs=c;type=file;cert={tmp / 'site.pem'}"]
    with r:
        yield r.proxy_port, tport, free


def connect(port: int, ca: trustme.CA | None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    if ca is None:
        return s
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx.wrap_socket(s, server_hostname="t.example.com")


def outcome(s: socket.socket, send: bytes = b"") -> bytes | None:
    """Everything the router sends until it closes; None if it is still open after GUARD seconds."""
    if send:
        s.sendall(send)
    got = b""
    try:
        while data := s.recv(65536):
            got += data
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError):
        pass  # a reset counts as closed
    finally:
        s.close()
    return got


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_head_that_never_ends_loses_its_connection(router: tuple[int, int, int], ca: trustme.CA, tls: bool) -> None:
    port = router[1] if tls else router[0]
    assert outcome(connect(port, ca if tls else None), b"GET / HTTP/1.1\r\nHost: t.example.com\r\n") == b""


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_body_that_stalls_loses_its_connection(router: tuple[int, int, int], ca: trustme.CA, tls: bool) -> None:
    port = router[1] if tls else router[0]
    head = b"POST /echo HTTP/1.1\r\nHost: t.example.com\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    assert outcome(connect(port, ca if tls else None), head) == b""


def test_a_connection_that_sends_nothing_is_closed(router: tuple[int, int, int]) -> None:
    assert outcome(connect(router[0], None)) == b""


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_answer_slower_than_wt_is_not_written(router: tuple[int, int, int], ca: trustme.CA, tls: bool) -> None:
    port = router[1] if tls else router[0]
    got = outcome(connect(port, ca if tls else None),
                  b"GET /slow?s=3 HTTP/1.1\r\nHost: t.example.com\r\nConnection: close\r\n\r\n")
    assert got == b"", got


def test_requests_within_rt_and_wt_are_served_on_one_connection(router: tuple[int, int, int], ca: trustme.CA) -> None:
    s = connect(router[1], ca)
    for _ in range(3):
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: t.example.com\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()


def test_a_listener_without_rt_and_wt_waits(router: tuple[int, int, int]) -> None:
    """The same slow answer on the listener without wt= is written (the deadlines are per listener)."""
    got = outcome(connect(router[2], None), b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert got is not None and got.startswith(b"HTTP/1.1 200"), got
