"""The own HTTP/1.1 listener (router/listen/http1.py) through the real router, over raw sockets: what it does
beyond the framing rules the other protocol tests already cover (tests/test_protocol.py,
tests/test_hostile_http.py, tests/test_fastbody.py run against it too)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc
from tests.test_hostile_http import head
from tests.test_protocol import Conn

backend = module_backend("l1")


@pytest.fixture(scope="module")
def router(backend: Backend) -> Iterator[RouterProc]:
    routes = f"route add svc /public http://127.0.0.1:{backend.port}/"
    with RouterProc.static(routes) as r:
        yield r


def closed(c: Conn) -> bool:
    return not c.buf and not c._fill()


def test_valid_request_then_garbage_is_answered_then_refused(router: RouterProc, backend: Backend) -> None:
    """fabio's behaviour: the valid request is answered, then the bytes that are not a request get the 400."""
    before = backend.hits
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", b"Content-Length: 4", target=b"/public/echo") + b"abcd" + b"GARBAGE\r\n\r\n")
        status, _, body = c.response()
        assert (status, body) == (200, b"abcd")
        status, headers, body = c.response()
        assert status == 400 and b"bad request: " in body and b"method" in body.lower(), body
        assert headers["connection"] == "close" and closed(c)
    finally:
        c.close()
    assert [(s.path, s.body) for s in backend.requests[before:]] == [("/public/echo", b"abcd")]


def test_pipelined_requests_are_answered_in_order(router: RouterProc, backend: Backend) -> None:
    c = Conn(router.proxy_port)
    try:
        c.send(b"".join(head(b"Host: a", method=b"GET", target=b"/public/slow?s=%.1f" % s) for s in (0.3, 0.0))
               + head(b"Host: a", b"Content-Length: 2", target=b"/public/echo") + b"ok")
        first, second, third = c.response(), c.response(), c.response()
    finally:
        c.close()
    assert [first[0], second[0], third[0]] == [200, 200, 200]
    assert third[2] == b"ok"  # the slow first answer came first, the echo last
    assert [s.path for s in backend.requests[-3:]] == ["/public/slow?s=0.3", "/public/slow?s=0.0", "/public/echo"]


def test_other_upgrades_are_served_as_plain_requests_then_closed(router: RouterProc, backend: Backend) -> None:
    """An `Upgrade: h2c` (not a WebSocket) is answered as HTTP/1.1; the parser cannot go on, so we close."""
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__",
                    method=b"GET", target=b"/public/h2c"))
        status, headers, body = c.response()
        assert (status, body) == (200, b"l1\n")
        assert headers["connection"] == "close" and closed(c)
    finally:
        c.close()
    assert backend.requests[-1].path == "/public/h2c" and "upgrade" not in backend.requests[-1].headers


def test_half_closed_client_still_gets_its_answer(router: RouterProc) -> None:
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", method=b"GET", target=b"/public/slow?s=0.2"))
        c.sock.shutdown(socket.SHUT_WR)
        status, _, body = c.response()
        assert (status, body) == (200, b"l1\n")
    finally:
        c.close()
