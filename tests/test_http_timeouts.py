"""fabio's `rt=`/`wt=` on HTTP and HTTPS listeners (Go's http.Server ReadTimeout/WriteTimeout), through the
real router: a request whose head or body does not arrive within rt, or whose answer is not written within
wt (a slow instance), loses its connection without an answer; requests within both are served, on the same
keep-alive connection too (wt is 2 s so that a normal answer on a loaded machine stays within it). Clients
are raw sockets, Python's ssl, h2 and curl; the waits are hang guards only.
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
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port};rt=1s;wt=2s,127.0.0.1:{tport};cs=c;rt=1s;wt=2s,"
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
                  b"GET /slow?s=5 HTTP/1.1\r\nHost: t.example.com\r\nConnection: close\r\n\r\n")
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


# ----------------------------------------------------------------------------- HTTP/2 (h2 by ALPN): per stream

def h2_connection(port: int, ca: trustme.CA):  # type: ignore[no-untyped-def]
    import h2.config
    import h2.connection

    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=GUARD), server_hostname="t.example.com")
    assert s.selected_alpn_protocol() == "h2"
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    h.initiate_connection()
    s.sendall(h.data_to_send())
    return s, h


def h2_outcome(s: socket.socket, h, sid: int) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    """("reset", error code) or ("status", :status) of stream `sid`; the connection stays open."""
    import h2.events

    status = None
    while True:
        data = s.recv(65536)
        assert data, "the router closed the whole connection"
        for ev in h.receive_data(data):
            if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                return "reset", ev.error_code
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = dict(ev.headers)[b":status"]
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                return "status", status
        s.sendall(h.data_to_send())


def test_http2_streams_past_rt_or_wt_are_reset_and_the_connection_goes_on(router: tuple[int, int, int],
                                                                           ca: trustme.CA) -> None:
    import h2.errors

    s, h = h2_connection(router[1], ca)
    head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"t.example.com")]
    h.send_headers(1, [*head, (b":path", b"/slow?s=5")], end_stream=True)  # its answer takes longer than wt
    s.sendall(h.data_to_send())
    assert h2_outcome(s, h, 1) == ("reset", h2.errors.ErrorCodes.INTERNAL_ERROR)
    h.send_headers(3, [(b":method", b"POST"), *head[1:], (b":path", b"/echo"), (b"content-length", b"100")])
    h.send_data(3, b"x" * 10)  # and the other 90 bytes never come: rt
    s.sendall(h.data_to_send())
    assert h2_outcome(s, h, 3) == ("reset", h2.errors.ErrorCodes.INTERNAL_ERROR)
    h.send_headers(5, [*head, (b":path", b"/ok")], end_stream=True)
    s.sendall(h.data_to_send())
    assert h2_outcome(s, h, 5) == ("status", b"200")  # the same connection still serves
    s.close()


def test_curl_sees_the_http2_stream_reset(router: tuple[int, int, int], ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    out = subprocess.run(["curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(tmp_path / "ca.pem"),
                          "--resolve", f"t.example.com:{router[1]}:127.0.0.1", f"https://t.example.com:{router[1]}/slow?s=5"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 92 and "INTERNAL_ERROR" in out.stderr, (out.returncode, out.stderr)  # curl's HTTP/2 stream error
