"""fabio's proxy/gzip tests (gzip_handler_test.go, content_type_test.go) replayed through a real router.

fabio's handler tests wrap Go handlers; here the same answers come from a raw HTTP backend (so a body can
come without a Content-Type, as in fabio's text handler), and the router runs with fabio's example
`proxy.gzip.contenttype`. `proxy.compress.minsize 0`: fabio compresses every size (ours skips bodies
under 1024 bytes by default, docs/compat.md), and its text handler answers 11 bytes.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.router_proc import RouterProc

FABIO_TYPES = r"^(text/.*|application/(javascript|json|font-woff|xml)|.*\+(json|xml))(;.*)?$"


def _answer(path: str) -> bytes:
    u = urlsplit(path)
    if u.path == "/text":  # fabio's test_text_handler: Content-Length set, no Content-Type
        return b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nHello World"
    if u.path == "/binary":  # test_binary_handler
        return b"HTTP/1.1 200 OK\r\nContent-Type: image/jpg\r\nContent-Length: 1\r\n\r\n*"
    if u.path == "/compressed":  # test_already_compressed_handler: gzip written by the handler itself
        body = gzip.compress(b"Hello World")
        return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body)
    ctype = parse_qs(u.query)["t"][0].encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: 11\r\n\r\nHello World"


@pytest.fixture(scope="module")
def raw_backend() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    conn.sendall(_answer(head.split(b" ")[1].decode()))

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    srv.close()


@pytest.fixture(scope="module")
def router(raw_backend: int) -> Iterator[RouterProc]:
    with RouterProc.static(f"route add app / http://127.0.0.1:{raw_backend}/", "-proxy.gzip.contenttype",
                           FABIO_TYPES, "-proxy.compress.minsize", "0") as r:
        yield r


def _get(r: RouterProc, path: str, accept: str) -> tuple[dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", r.proxy_port, timeout=10)
    try:
        c.request("GET", path, headers={"Accept-Encoding": accept})
        resp = c.getresponse()
        return {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        c.close()


def test_gzip_handler_compressable_type(router: RouterProc) -> None:
    h, body = _get(router, "/text", "gzip")
    assert h["content-type"] == "text/plain; charset=utf-8"  # sniffed, as Go does before the regexp
    assert h["content-encoding"] == "gzip"
    assert h["content-length"] == str(len(body))
    assert gzip.decompress(body) == b"Hello World"


def test_gzip_handler_not_compressing_twice(router: RouterProc) -> None:
    h, body = _get(router, "/compressed", "gzip")
    assert h["content-encoding"] == "gzip"
    assert gzip.decompress(body) == b"Hello World"


def test_gzip_handler_compressable_type_no_accept(router: RouterProc) -> None:
    h, body = _get(router, "/text", "none")
    assert "content-encoding" not in h
    assert body == b"Hello World"


def test_gzip_handler_non_compressable_type(router: RouterProc) -> None:
    h, body = _get(router, "/binary", "gzip")
    assert "content-encoding" not in h
    assert body == b"*"


@pytest.mark.parametrize("ctype", [
    "text/foo", "text/foo; charset=UTF-8", "text/plain", "text/plain; charset=UTF-8", "application/json",
    "application/json; charset=UTF-8", "application/javascript", "application/javascript; charset=UTF-8",
    "application/font-woff", "application/font-woff; charset=UTF-8", "application/xml",
    "application/xml; charset=UTF-8", "vendor/vendor.foo+json", "vendor/vendor.foo+json; charset=UTF-8",
    "vendor/vendor.foo+xml", "vendor/vendor.foo+xml; charset=UTF-8",
])
def test_content_types(router: RouterProc, ctype: str) -> None:
    """fabio's TestContentTypes: every type its example regexp names is compressed through the router."""
    h, body = _get(router, "/typed?t=" + ctype.replace(" ", "%20").replace("+", "%2B"), "gzip")
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == b"Hello World"


def test_vary_on_every_response(router: RouterProc) -> None:
    """fabio adds Vary: Accept-Encoding before it looks at the request, so every answer has it."""
    for path, accept in (("/binary", "gzip"), ("/text", "none")):
        h, _ = _get(router, path, accept)
        assert h["vary"] == "Accept-Encoding"
