"""HTTP/1.x protocol details through the real router, over raw sockets so nothing is hidden by a client
library: chunked framing both ways, Expect: 100-continue, bodiless statuses, HEAD on a kept-alive
connection, HTTP/1.0, the header-size limit, slow peers, and SSE without an Accept header.
Things already covered in tests/test_proxy_http.py are not repeated here.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc

backend = module_backend("p1")


@pytest.fixture(scope="module")
def router(backend: Backend) -> Iterator[RouterProc]:
    routes = "\n".join([
        f"route add svc /plain http://127.0.0.1:{backend.port}/",
        f"route add other /other http://127.0.0.1:{backend.port}/",
    ])
    with RouterProc.static(routes, "-proxy.maxheaderbytes", "65536") as r:
        yield r


class Conn:
    """One client connection; reads responses by their framing (length, chunked, or close)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            assert self._fill(), f"connection closed before {marker!r}; got {self.buf!r}"
        out, self.buf = self.buf.split(marker, 1)
        return out + marker

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._fill(), "connection closed early"
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if head_only or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.read_until(b"\r\n").strip().split(b";")[0], 16)
                body += self.read_exact(size)
                self.read_exact(2)
                if size == 0:
                    return status, headers, body
        if "content-length" in headers:
            return status, headers, self.read_exact(int(headers["content-length"]))
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def test_chunked_response_and_chunked_request(router: RouterProc) -> None:
    c = Conn(router.proxy_port)
    c.send(b"GET /plain/stream?n=3&gap=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = c.response()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
    # on the same connection: a chunked upload, with a chunk extension and a trailer
    c.send(b"POST /plain/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    status, _, body = c.response()
    assert status == 200 and body == b"hello world"
    c.close()


def test_expect_100_continue(router: RouterProc, backend: Backend) -> None:
    c = Conn(router.proxy_port)
    c.send(b"POST /plain/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = c.response()  # we wait for the interim answer before sending anything
    assert status == 100
    c.send(b"hello there")
    status, _, body = c.response()
    assert status == 200 and body == b"hello there"
    assert backend.requests[-1].body == b"hello there"
    c.close()


def test_expect_100_continue_without_route_is_answered_before_the_body(router: RouterProc) -> None:
    c = Conn(router.proxy_port)
    c.send(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    status, _, body = c.response()
    assert status == 404 and body == b"no route\n"  # no 100 first: the client never has to send the body
    c.close()


def test_bodiless_statuses_and_head_keep_the_connection_usable(router: RouterProc) -> None:
    c = Conn(router.proxy_port)
    for code in (204, 304):
        c.send(f"GET /plain/status?code={code} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, _ = c.response()
        assert status == code and headers.get("x-backend") == "p1"
    c.send(b"HEAD /plain/big?n=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = c.response(head_only=True)
    assert status == 200 and headers["content-length"] == "5000"
    # had any of those carried stray body bytes, this answer would be misparsed
    c.send(b"GET /plain/x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = c.response()
    assert status == 200 and body == b"p1\n"
    c.close()


def test_http10_client_gets_no_chunked_framing(router: RouterProc) -> None:
    c = Conn(router.proxy_port)
    c.send(b"GET /plain/stream?n=3&gap=0 HTTP/1.0\r\nHost: x\r\n\r\n")
    status, headers, body = c.response()
    assert status == 200 and "chunked" not in headers.get("transfer-encoding", "")
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"  # delimited by the close
    c.close()


def test_oversized_header_block_is_431(router: RouterProc, backend: Backend) -> None:
    fields = "".join(f"X-Big-{i}: {'a' * 4000}\r\n" for i in range(5)).encode()  # 20 KB: allowed
    c = Conn(router.proxy_port)
    c.send(b"GET /plain/ok HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert c.response()[0] == 200
    before = backend.hits
    fields = "".join(f"X-Big-{i}: {'a' * 4000}\r\n" for i in range(20)).encode()  # 80 KB > 64 KiB
    c.send(b"GET /plain/ok HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert c.response()[0] == 431
    assert backend.hits == before  # never forwarded
    c.close()


def test_slow_client_does_not_block_others(router: RouterProc) -> None:
    size = 32 << 20
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(30)
    slow.connect(("127.0.0.1", router.proxy_port))
    slow.sendall(f"GET /plain/big?n={size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    first = slow.recv(1024)  # the response has started; now this client stops reading
    assert first.startswith(b"HTTP/1.1 200")
    for _ in range(5):
        r = httpx.get(router.url + "/other/fast", timeout=10)
        assert r.status_code == 200 and r.text == "p1\n"
    got = len(first)
    while chunk := slow.recv(1 << 20):  # and the slow client still gets everything
        got += len(chunk)
    slow.close()
    assert got > size


def test_slow_upstream_does_not_block_other_routes(router: RouterProc) -> None:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(httpx.get(router.url + "/plain/slow?s=3", timeout=20).status_code))
    t.start()
    try:
        for _ in range(5):
            assert httpx.get(router.url + "/other/fast", timeout=10).status_code == 200
        assert t.is_alive() and not result  # the slow request was in flight the whole time
    finally:
        t.join(20)
    assert result == [200]


def test_sse_flushes_each_event_without_accept_header(router: RouterProc) -> None:
    c = Conn(router.proxy_port)
    c.send(b"GET /plain/stream?n=3&gap=1&sse=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # no Accept header
    head = c.read_until(b"\r\n\r\n")
    assert b"text/event-stream" in head
    first = c.read_until(b"data: 0\n\n")
    assert b"data: 1" not in first + c.buf  # the first event arrived alone, before the upstream sent more
    rest = b""
    while b"0\r\n\r\n" not in rest:
        assert c._fill()
        rest, c.buf = rest + c.buf, b""
    assert b"data: 1\n\n" in rest and b"data: 2\n\n" in rest
    c.close()
