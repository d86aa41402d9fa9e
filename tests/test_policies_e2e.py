"""Traffic policies (issue 19) end to end: a real router process, real backends, curl where it fits.

Compression, header rewriting, header routing, rate limits and sticky sessions, each configured as a route
option in the static source (the same option text a urlprefix- tag or an override line carries: the tag
and override paths are covered by tests/test_policy_table.py).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator

import brotli
import httpx
import pytest
import zstandard
from aiohttp import web

from tests.backends import Backend
from tests.router_proc import RouterProc

JSON_BODY = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(400)]).encode()


class PolicyBackend(Backend):
    """The test backend plus answers the policies need: typed bodies, encoded ones, gated SSE."""

    gate: threading.Event

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        p = request.path
        if p.endswith("/json"):
            n = int(request.query.get("n", len(JSON_BODY)))
            extra = {k[2:]: v for k, v in request.query.items() if k.startswith("h-")}
            return web.Response(body=(JSON_BODY * (n // len(JSON_BODY) + 1))[:n],
                                headers={"Content-Type": "application/json", "ETag": '"v1"', **extra})
        if p.endswith("/png"):
            return web.Response(body=b"\x89PNG" + b"\0" * 5000, headers={"Content-Type": "image/png"})
        if p.endswith("/pregz"):
            return web.Response(body=gzip.compress(JSON_BODY),
                                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        if p.endswith("/powered"):
            return web.Response(text="ok\n", headers={"Server": "Apache/2.4.1", "X-Powered-By": "PHP/5.6",
                                                      "X-Keep": "1"})
        if p.endswith("/gated-sse"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: first\n\n")
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            await resp.write(b"data: second\n\n")
            await resp.write_eof()
            return resp
        return await super()._handle(request)


@pytest.fixture(scope="module")
def b1() -> Iterator[PolicyBackend]:
    b = PolicyBackend("b1")
    b.gate = threading.Event()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def b2() -> Iterator[PolicyBackend]:
    b = PolicyBackend("b2")
    b.gate = threading.Event()
    b.start()
    yield b
    b.stop()


def _raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET with http.client, which decodes nothing: the body as the router sent it."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _decode(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        return gzip.decompress(data)
    if enc == "br":
        return brotli.decompress(data)
    if enc == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# ------------------------------------------------------------------------------------------ compression


@pytest.fixture(scope="module")
def gz_router(b1: PolicyBackend) -> Iterator[RouterProc]:
    """fabio's proxy.gzip.contenttype for every route; one route turns it off, one allows gzip only."""
    routes = "\\n".join([
        f"route add app /c/ http://127.0.0.1:{b1.port}/",
        f'route add app /off/ http://127.0.0.1:{b1.port}/ opts "compress=off"',
        f'route add app /gz/ http://127.0.0.1:{b1.port}/ opts "compress=gzip"',
    ])
    with RouterProc.static(routes, "-proxy.gzip.contenttype", r"^(text/.*|application/json)(;.*)?$") as r:
        yield r


@pytest.mark.parametrize(("accept", "enc"), [
    ("gzip", "gzip"), ("br", "br"), ("zstd", "zstd"), ("gzip, deflate, br, zstd", "zstd"),
    ("br;q=1, zstd;q=0.5, gzip;q=0.1", "br"), ("gzip;q=0", ""), ("none", ""), ("", ""),
])
def test_compression_negotiated(gz_router: RouterProc, accept: str, enc: str) -> None:
    status, h, body = _raw_get(gz_router.proxy_port, "/c/json", {"Accept-Encoding": accept} if accept else {})
    assert status == 200
    assert h.get("content-encoding", "") == enc
    assert h["vary"] == "Accept-Encoding"
    assert _decode(enc, body) == JSON_BODY
    assert int(h["content-length"]) == len(body)  # a whole body of known length: sent with its length
    if enc:
        assert len(body) < len(JSON_BODY) // 4 and h["etag"] == 'W/"v1"'
    else:
        assert h["etag"] == '"v1"'


@pytest.mark.parametrize(("path", "why"), [
    ("/c/json?n=500", "too small (proxy.compress.minsize 1024)"),
    ("/c/png", "a type the regexp does not match"),
    ("/c/json?h-Cache-Control=no-transform", "Cache-Control: no-transform"),
    ("/off/json", "compress=off on the route"),
])
def test_compression_skipped(gz_router: RouterProc, path: str, why: str) -> None:
    status, h, body = _raw_get(gz_router.proxy_port, path, {"Accept-Encoding": "gzip, br, zstd"})
    assert status == 200 and "content-encoding" not in h, why
    assert body[:4] in (JSON_BODY[:4], b"\x89PNG"), why


def test_already_encoded_passes_through(gz_router: RouterProc) -> None:
    status, h, body = _raw_get(gz_router.proxy_port, "/c/pregz", {"Accept-Encoding": "br, gzip"})
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == JSON_BODY  # not compressed twice


def test_route_encoding_list(gz_router: RouterProc) -> None:
    _, h, body = _raw_get(gz_router.proxy_port, "/gz/json", {"Accept-Encoding": "zstd, br, gzip"})
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == JSON_BODY


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_decodes_each_encoding(gz_router: RouterProc) -> None:
    """curl --compressed (its own gzip, brotli and zstd decoders) reads what the router sends."""
    for enc in ("gzip", "br", "zstd"):
        out = subprocess.run(["curl", "-sS", "--compressed", "-H", f"Accept-Encoding: {enc}", "-D", "-",
                              f"{gz_router.url}/c/json"], capture_output=True, timeout=30, check=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        assert f"content-encoding: {enc}".encode() in head.lower()
        assert body == JSON_BODY


def test_streamed_response_is_compressed_per_chunk(gz_router: RouterProc, b1: PolicyBackend) -> None:
    """An SSE stream: the first event arrives (compressed, decodable on its own) while the backend still
    holds the second one back; only after we saw it does the backend send the rest."""
    b1.gate.clear()
    c = http.client.HTTPConnection("127.0.0.1", gz_router.proxy_port, timeout=20)
    try:
        c.request("GET", "/c/gated-sse", headers={"Accept-Encoding": "gzip"})
        r = c.getresponse()
        assert r.getheader("content-encoding") == "gzip" and r.getheader("content-length") is None
        d = __import__("zlib").decompressobj(31)
        seen = b""
        while b"first" not in seen:
            chunk = r.read1(65536)
            assert chunk, "stream ended before the first event"
            seen += d.decompress(chunk)
        assert seen == b"data: first\n\n"  # and the second is still held by the backend: flushed per chunk
        b1.gate.set()
        rest = r.read()
        assert seen + d.decompress(rest) + d.flush() == b"data: first\n\ndata: second\n\n"
    finally:
        b1.gate.set()
        c.close()


def test_metrics_count_saved_bytes(gz_router: RouterProc) -> None:
    _raw_get(gz_router.proxy_port, "/c/json", {"Accept-Encoding": "gzip"})
    text = httpx.get(gz_router.ui + "/metrics", timeout=5).text
    saved = [ln for ln in text.splitlines() if ln.startswith("consul_router_compressed_bytes_saved_total ")]
    assert saved and float(saved[0].split()[-1]) > len(JSON_BODY) / 2


def test_compress_on_without_global_setting(b1: PolicyBackend) -> None:
    """compress=on turns it on for one route with fabio's example content types; others stay as they are."""
    routes = (f'route add app /z/ http://127.0.0.1:{b1.port}/ opts "compress=on"\\n'
              f"route add app /p/ http://127.0.0.1:{b1.port}/")
    with RouterProc.static(routes) as r:
        _, h, body = _raw_get(r.proxy_port, "/z/json", {"Accept-Encoding": "br"})
        assert h["content-encoding"] == "br" and brotli.decompress(body) == JSON_BODY
        _, h, body = _raw_get(r.proxy_port, "/p/json", {"Accept-Encoding": "br"})
        assert "content-encoding" not in h and "vary" not in h and body == JSON_BODY
