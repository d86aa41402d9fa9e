"""What fabio's gzip handler does with answers an aiohttp backend cannot give: a body without any
Content-Type (fabio's text handler; Go sniffs one before the regexp is applied), from a raw HTTP backend.
The rows of fabio's proxy/gzip tests themselves are in tests/fabio/test_gzip.py. The router runs with
fabio's example `proxy.gzip.contenttype` and `proxy.compress.minsize 0` (fabio compresses every size).
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


def test_a_body_without_content_type_is_sniffed_then_compressed(router: RouterProc) -> None:
    h, body = _get(router, "/text", "gzip")
    assert h["content-type"] == "text/plain; charset=utf-8"  # sniffed, as Go does before the regexp
    assert h["content-encoding"] == "gzip"
    assert h["content-length"] == str(len(body))
    assert gzip.decompress(body) == b"Hello World"


def test_vary_on_every_response(router: RouterProc) -> None:
    """fabio adds Vary: Accept-Encoding before it looks at the request, so every answer has it."""
    for path, accept in (("/binary", "gzip"), ("/text", "none")):
        h, _ = _get(router, path, accept)
        assert h["vary"] == "Accept-Encoding"
