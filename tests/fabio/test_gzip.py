"""fabio's proxy/gzip/gzip_handler_test.go and content_type_test.go, row by row, end to end through a router
process with fabio.properties' example `proxy.gzip.contenttype` (issue 19 brought the compression). fabio
compresses bodies of any size and these answer 11 bytes, so the router runs with `proxy.compress.minsize 0`
(ours, 1024 by default: docs/compat.md, "Compression").

fabio's text handler sets no Content-Type and Go's server sniffs `text/plain; charset=utf-8`; our server
sends that type itself.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.fabio.e2e import Server, get, text
from tests.fabio.rows import Outcome, row, table
from tests.router_proc import RouterProc

CONTENT_TYPES = r"^(text/.*|application/(javascript|json|font-woff|xml)|.*\+(json|xml))(;.*)?$"
HELLO = b"Hello World"


async def typed(request: web.Request) -> web.StreamResponse:
    """Hello World with the Content-Type the request asks for (`?ct=`)."""
    return web.Response(body=HELLO, headers={"Content-Type": request.query["ct"]})


SERVERS = {
    "text.test": text(HELLO, Content_Type="text/plain; charset=utf-8"),
    "binary.test": text(b"*", Content_Type="image/jpg"),
    "compressed.test": text(gzip.compress(HELLO, mtime=0), Content_Encoding="gzip"),
    "typed.test": typed,
}


@pytest.fixture(scope="module")
def router() -> Iterator[RouterProc]:
    servers = {h: Server(fn).start() for h, fn in SERVERS.items()}
    routes = "\n".join(f"route add svc {h}/ {s.url}/" for h, s in servers.items())
    try:
        with RouterProc.static(routes, "-proxy.gzip.contenttype", CONTENT_TYPES, "-proxy.compress.minsize", "0") as r:
            yield r
    finally:
        for s in servers.values():
            s.stop()


HANDLER = [  # host, Accept-Encoding, Content-Encoding of the answer, decoded body
    row("Test_GzipHandler_CompressableType", "text.test", "gzip", "gzip", HELLO),
    row("Test_GzipHandler_NotCompressingTwice", "compressed.test", "gzip", "gzip", HELLO),
    row("Test_GzipHandler_CompressableType_NoAccept", "text.test", "none", "", HELLO),
    row("Test_GzipHandler_NonCompressableType", "binary.test", "gzip", "", b"*"),
]


@pytest.mark.parametrize(("host", "accept", "encoding", "body", "outcome"),
                         table("proxy/gzip/gzip_handler_test.go", "gzip_handler_test", HANDLER))
def test_gzip_handler(host: str, accept: str, encoding: str, body: bytes, outcome: Outcome, router: RouterProc) -> None:
    a = get(router.url, Host=host, **{"Accept-Encoding": accept})
    assert a.status == 200
    assert a.headers.get("content-encoding", "") == outcome.want(encoding)
    assert (gzip.decompress(a.body) if encoding else a.body) == body
    if host == "text.test" and encoding:
        assert a.headers["content-type"] == "text/plain; charset=utf-8"
        assert a.headers["content-length"] == str(len(a.body))


TYPES = ["text/foo", "text/foo; charset=UTF-8", "text/plain", "text/plain; charset=UTF-8", "application/json",
         "application/json; charset=UTF-8", "application/javascript", "application/javascript; charset=UTF-8",
         "application/font-woff", "application/font-woff; charset=UTF-8", "application/xml",
         "application/xml; charset=UTF-8", "vendor/vendor.foo+json", "vendor/vendor.foo+json; charset=UTF-8",
         "vendor/vendor.foo+xml", "vendor/vendor.foo+xml; charset=UTF-8"]


@pytest.mark.parametrize(("content_type", "outcome"), table("proxy/gzip/content_type_test.go", "TestContentTypes", [
    row(t, t) for t in TYPES]))
def test_content_types(content_type: str, outcome: Outcome, router: RouterProc) -> None:
    """fabio checks that its example regexp matches these types; here a response of each type is compressed."""
    a = get(router.url + "/?ct=" + content_type.replace(" ", "%20").replace(";", "%3B").replace("+", "%2B"),
            Host="typed.test", **{"Accept-Encoding": "gzip"})
    assert a.status == 200 and a.headers["content-type"] == content_type
    assert a.headers.get("content-encoding") == "gzip" and gzip.decompress(a.body) == HELLO
