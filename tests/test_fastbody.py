"""Request bodies past llhttp (router/listen/http1.py): framing stays exact through the real router.

The bypass engages only when the head arrives before (part of) the body, so these tests send the head
and the body in separate writes, in pieces, and with a pipelined request glued to the body's last
bytes; the recording backend must see exactly the bodies sent, and nothing smuggled.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc
from tests.test_hostile_http import head
from tests.test_protocol import Conn

backend = module_backend("fb")


@pytest.fixture(scope="module")
def router(backend: Backend) -> Iterator[RouterProc]:
    routes = f"route add svc /up http://127.0.0.1:{backend.port}/"
    with RouterProc.static(routes) as r:
        yield r


def send_slowly(c: Conn, *parts: bytes) -> None:
    for p in parts:
        c.send(p)
        time.sleep(0.02)  # separate reads on the router's side


def test_body_in_pieces_then_pipelined_request(router: RouterProc, backend: Backend) -> None:
    before = backend.hits
    c = Conn(router.proxy_port)
    try:
        send_slowly(c, head(b"Host: a", b"Content-Length: 10", target=b"/up/echo"), b"abc", b"defg",
                    b"hij" + head(b"Host: a", b"Content-Length: 2", target=b"/up/echo") + b"zz")
        assert c.response()[2] == b"abcdefghij"
        assert c.response()[2] == b"zz"
    finally:
        c.close()
    assert [(s.path, s.body) for s in backend.requests[before:]] == [("/up/echo", b"abcdefghij"), ("/up/echo", b"zz")]


def test_body_partly_with_the_head_rest_later(router: RouterProc, backend: Backend) -> None:
    """Bytes that came with the head went through llhttp; the rest bypasses it: nothing lost or doubled."""
    c = Conn(router.proxy_port)
    try:
        send_slowly(c, head(b"Host: a", b"Content-Length: 6", target=b"/up/echo") + b"12", b"3456")
        assert c.response()[2] == b"123456"
        c.send(b"GET /up/next HTTP/1.1\r\nHost: a\r\n\r\n")  # the connection is in step for the next one
        assert c.response()[2] == b"fb\n"
    finally:
        c.close()


def test_large_body_pauses_and_resumes_reading(router: RouterProc, backend: Backend) -> None:
    """5 MiB (several times the read high-water mark) arrives whole and in order."""
    body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", b"Content-Length: %d" % len(body), target=b"/up/echo"))
        for i in range(0, len(body), 256 * 1024):
            c.send(body[i:i + 256 * 1024])
        _, headers, got = c.response()
    finally:
        c.close()
    assert len(got) == len(body) and got == body
    assert backend.requests[-1].body == body


def test_expect_continue_with_separate_body(router: RouterProc, backend: Backend) -> None:
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", b"Content-Length: 4", b"Expect: 100-continue", target=b"/up/echo"))
        status, _, _ = c.response()
        assert status == 100
        c.send(b"wxyz")
        assert c.response()[2] == b"wxyz"
    finally:
        c.close()
