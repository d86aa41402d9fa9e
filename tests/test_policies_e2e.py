"""Traffic policies (issue 19) end to end, part 1: compression, header rewriting, header routing, body size.

A real router process and real backends, curl where it fits. Each policy is configured as a route option in
the static source: the same option text a urlprefix- tag or an override line carries (those paths:
tests/test_policy_table.py, tests/test_policies_consul.py). Rate limits and sticky sessions:
tests/test_policies_limits_e2e.py.
"""

from __future__ import annotations

import gzip
import http.client
import shutil
import subprocess
from collections.abc import Iterator

import brotli
import httpx
import pytest

from tests.policy_backends import JSON_BODY, PolicyBackend, decode, policy_backend, raw_get
from tests.router_proc import RouterProc

b1 = policy_backend("b1")
b2 = policy_backend("b2")

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
    status, h, body = raw_get(gz_router.proxy_port, "/c/json", {"Accept-Encoding": accept} if accept else {})
    assert status == 200
    assert h.get("content-encoding", "") == enc
    assert h["vary"] == "Accept-Encoding"
    assert decode(enc, body) == JSON_BODY
    assert int(h["content-length"]) == len(body)  # a whole body of known length: sent with its length
    if enc:
        assert len(body) < len(JSON_BODY) // 4 and h["etag"] == 'W/"v1"' and "accept-ranges" not in h
    else:
        assert h["etag"] == '"v1"' and h["accept-ranges"] == "bytes"


@pytest.mark.parametrize(("path", "why"), [
    ("/c/json?n=500", "too small (proxy.compress.minsize 1024)"),
    ("/c/png", "a type the regexp does not match"),
    ("/c/json?h-Cache-Control=no-transform", "Cache-Control: no-transform"),
    ("/off/json", "compress=off on the route"),
])
def test_compression_skipped(gz_router: RouterProc, path: str, why: str) -> None:
    status, h, body = raw_get(gz_router.proxy_port, path, {"Accept-Encoding": "gzip, br, zstd"})
    assert status == 200 and "content-encoding" not in h, why
    assert body[:4] in (JSON_BODY[:4], b"\x89PNG"), why


def test_already_encoded_passes_through(gz_router: RouterProc) -> None:
    status, h, body = raw_get(gz_router.proxy_port, "/c/pregz", {"Accept-Encoding": "br, gzip"})
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == JSON_BODY  # not compressed twice


def test_gzip_answer_decoded_for_a_client_that_does_not_take_it(gz_router: RouterProc) -> None:
    """What Go's transport does for fabio: a client that does not take gzip (http.client sends identity) gets
    the body decoded."""
    status, h, body = raw_get(gz_router.proxy_port, "/c/pregz", {})
    assert status == 200 and "content-encoding" not in h and body == JSON_BODY
    status, h, body = raw_get(gz_router.proxy_port, "/off/pregz", {})  # compress=off: passed as it is
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == JSON_BODY


def test_route_encoding_list(gz_router: RouterProc) -> None:
    _, h, body = raw_get(gz_router.proxy_port, "/gz/json", {"Accept-Encoding": "zstd, br, gzip"})
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
    raw_get(gz_router.proxy_port, "/c/json", {"Accept-Encoding": "gzip"})
    text = httpx.get(gz_router.ui + "/metrics", timeout=5).text
    saved = [ln for ln in text.splitlines() if ln.startswith("consul_router_compressed_bytes_saved_total ")]
    assert saved and float(saved[0].split()[-1]) > len(JSON_BODY) / 2


def test_compress_on_without_global_setting(b1: PolicyBackend) -> None:
    """compress=on turns it on for one route with fabio's example content types; others stay as they are."""
    routes = (f'route add app /z/ http://127.0.0.1:{b1.port}/ opts "compress=on"\\n'
              f"route add app /p/ http://127.0.0.1:{b1.port}/")
    with RouterProc.static(routes) as r:
        _, h, body = raw_get(r.proxy_port, "/z/json", {"Accept-Encoding": "br"})
        assert h["content-encoding"] == "br" and brotli.decompress(body) == JSON_BODY
        _, h, body = raw_get(r.proxy_port, "/p/json", {"Accept-Encoding": "br"})
        assert "content-encoding" not in h and "vary" not in h and body == JSON_BODY


# ------------------------------------------------------------------------------------------ header rewriting


def test_header_rewriting_both_ways(b1: PolicyBackend) -> None:
    opts = ("reqhdr.set=X-Env:prod|X-Quote:a%20b reqhdr.add=X-Multi:2 reqhdr.del=X-Secret "
            "resphdr.del=Server,X-Powered-By resphdr.set=Content-Security-Policy:default-src%20'self'")
    with RouterProc.static(f'route add app /h/ http://127.0.0.1:{b1.port}/ opts "{opts}"') as r:
        before = len(b1.requests)
        status, h, body = raw_get(r.proxy_port, "/h/powered", {
            "X-Secret": "s3", "X-Env": "dev", "X-Multi": "1", "X-Forwarded-For": "192.0.2.9"})
        assert status == 200 and body == b"ok\n"
        seen = b1.requests[before].headers
        assert seen["x-env"] == "prod" and seen["x-quote"] == "a b" and "x-secret" not in seen
        assert seen["x-multi"] == "1, 2"  # added next to the client's value
        assert seen["x-forwarded-for"] == "192.0.2.9, 127.0.0.1"  # forwarding headers stay the router's
        assert "server" not in h and "x-powered-by" not in h and h["x-keep"] == "1"
        assert h["content-security-policy"] == "default-src 'self'"


# ------------------------------------------------------------------------------------------ header routing


@pytest.fixture(scope="module")
def match_router(b1: PolicyBackend, b2: PolicyBackend) -> Iterator[RouterProc]:
    routes = "\\n".join([
        f"route add v1 /api/ http://127.0.0.1:{b1.port}/",
        f'route add v2 /api/ http://127.0.0.1:{b2.port}/ opts "match=X-Version=2"',
        f'route add acc /api/ http://127.0.0.1:{b2.port}/ opts "match=Accept~vnd%5C.v3%5C%2B"',  # vnd\.v3\+
        f'route add v2only /m/ http://127.0.0.1:{b2.port}/ opts "match=X-Version"',
        f"route add root / http://127.0.0.1:{b1.port}/",
    ])
    with RouterProc.static(routes) as r:
        yield r


@pytest.mark.parametrize(("path", "headers", "want"), [
    ("/api/x", {}, "b1"),
    ("/api/x", {"X-Version": "2"}, "b2"),
    ("/api/x", {"X-Version": "3"}, "b1"),
    ("/api/x", {"Accept": "application/vnd.v3+json"}, "b2"),
    ("/m/x", {"X-Version": "anything"}, "b2"),
    ("/m/x", {}, "b1"),  # no variant matches and /m/ has no default pool: the next shorter path serves
])
def test_header_routing(match_router: RouterProc, path: str, headers: dict, want: str) -> None:
    status, _, body = raw_get(match_router.proxy_port, path, headers)
    assert (status, body) == (200, f"{want}\n".encode())


def test_api_routes_show_match_and_precedence(match_router: RouterProc) -> None:
    rows = httpx.get(match_router.ui + "/api/routes", timeout=5).json()
    by = {r["service"]: r for r in rows}
    assert by["v2"]["policies"] == {"match": "X-Version=2", "precedence": 1}
    assert by["acc"]["policies"]["precedence"] == 2  # an equal value outranks a regex
    assert "policies" not in by["v1"]



# ------------------------------------------------------------------------------------------ body size


def _post(port: int, path: str, body: bytes, chunked: bool) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        if chunked:
            c.request("POST", path, body=iter([body[i:i + 500] for i in range(0, len(body), 500)]),
                      encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
        else:
            c.request("POST", path, body=body)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_body_size_limits(b1: PolicyBackend) -> None:
    routes = "\\n".join([f'route add app /small/ http://127.0.0.1:{b1.port}/ opts "maxbody=1KB"',
                         f'route add app /free/ http://127.0.0.1:{b1.port}/ opts "maxbody=0"',
                         f"route add app /dflt/ http://127.0.0.1:{b1.port}/"])
    with RouterProc.static(routes, "-proxy.maxbodybytes", "3000") as r:
        before = len(b1.requests)
        assert _post(r.proxy_port, "/small/echo", b"x" * 1001, chunked=False) == 413
        assert len(b1.requests) == before  # refused before the upstream saw anything
        assert _post(r.proxy_port, "/small/echo", b"x" * 2000, chunked=True) == 413
        assert _post(r.proxy_port, "/small/echo", b"x" * 1000, chunked=False) == 200
        assert _post(r.proxy_port, "/small/echo", b"x" * 1000, chunked=True) == 200
        assert _post(r.proxy_port, "/dflt/echo", b"x" * 3001, chunked=False) == 413  # proxy.maxbodybytes
        assert _post(r.proxy_port, "/dflt/echo", b"x" * 3000, chunked=False) == 200
        assert _post(r.proxy_port, "/free/echo", b"x" * 10_000, chunked=False) == 200  # maxbody=0: no limit
        assert [s.body for s in b1.requests[before:]] == [b"x" * 1000] * 2 + [b"x" * 3000, b"x" * 10_000]



def test_websocket_upgrades_follow_header_routing(match_router: RouterProc) -> None:
    import asyncio

    import aiohttp

    async def talk(headers: dict[str, str]) -> str:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(match_router.url + "/api/ws", headers=headers) as ws:
            await ws.send_str("hi")
            return (await ws.receive(timeout=10)).data

    assert asyncio.run(talk({"X-Version": "2"})) == "b2:hi"
    assert asyncio.run(talk({})) == "b1:hi"
