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
import time
from collections.abc import Iterator

import brotli
import httpx
import pytest
import zstandard
from aiohttp import web

from tests.backend_proc import BackendProc
from tests.backends import Backend, Seen
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
            joined = {k.lower(): ", ".join(request.headers.getall(k)) for k in request.headers}
            self.requests.append(Seen(request.method, request.raw_path, joined, b""))
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


# ------------------------------------------------------------------------------------------ header rewriting


def test_header_rewriting_both_ways(b1: PolicyBackend) -> None:
    opts = ("reqhdr.set=X-Env:prod|X-Quote:a%20b reqhdr.add=X-Multi:2 reqhdr.del=X-Secret "
            "resphdr.del=Server,X-Powered-By resphdr.set=Content-Security-Policy:default-src%20'self'")
    with RouterProc.static(f'route add app /h/ http://127.0.0.1:{b1.port}/ opts "{opts}"') as r:
        before = len(b1.requests)
        status, h, body = _raw_get(r.proxy_port, "/h/powered", {
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
    status, _, body = _raw_get(match_router.proxy_port, path, headers)
    assert (status, body) == (200, f"{want}\n".encode())


def test_api_routes_show_match_and_precedence(match_router: RouterProc) -> None:
    rows = httpx.get(match_router.ui + "/api/routes", timeout=5).json()
    by = {r["service"]: r for r in rows}
    assert by["v2"]["policies"] == {"match": "X-Version=2", "precedence": 1}
    assert by["acc"]["policies"]["precedence"] == 2  # an equal value outranks a regex
    assert "policies" not in by["v1"]


# ------------------------------------------------------------------------------------------ rate limits


def _blast(port: int, path: str, seconds: float, threads: int, fresh: bool) -> tuple[int, list[str], float]:
    """Requests as fast as `threads` clients can send them for about `seconds`: (passed, Retry-After values
    of the 429s, seconds from the first request to the last answer)."""
    lock = threading.Lock()
    ok, retry, stamps = [0], [], []
    stop = time.monotonic() + seconds

    def run() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                break
            if fresh:
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            with lock:
                stamps.append(t0)
                stamps.append(time.monotonic())
                if r.status == 200:
                    ok[0] += 1
                else:
                    assert r.status == 429
                    retry.append(r.getheader("retry-after"))
        c.close()

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return ok[0], retry, max(stamps) - min(stamps)


@pytest.mark.parametrize("workers", [1, 2])
def test_rate_limit_holds_within_ten_percent(b1: PolicyBackend, workers: int) -> None:
    """Counted, not timed: what passed is the burst plus the rate times the span the requests covered."""
    rate, burst = 40, 20
    route = f'route add app /rl/ http://127.0.0.1:{b1.port}/ opts "ratelimit={rate}/s,burst={burst}"'
    with RouterProc.static(route, "-proxy.workers", str(workers)) as r:
        passed, retry, span = _blast(r.proxy_port, "/rl/x", 3.0, 8, fresh=workers > 1)
        expected = burst + rate * span
        assert abs(passed - expected) <= 0.1 * expected, (passed, expected, span)
        assert retry and set(retry) == {"1"}
        deadline = time.monotonic() + 15  # workers report their counters to the main process now and then
        while True:
            metrics = httpx.get(r.ui + "/metrics", timeout=5).text
            line = next(ln for ln in metrics.splitlines() if ln.startswith("consul_router_ratelimited_total "))
            if float(line.split()[-1]) == len(retry) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert float(line.split()[-1]) == len(retry)


def test_rate_limit_per_client_address(b1: PolicyBackend) -> None:
    route = f'route add app /rc/ http://127.0.0.1:{b1.port}/ opts "ratelimit=1/m,burst=2,per=client"'
    with RouterProc.static(route) as r:
        def get(src: str) -> tuple[int, str | None]:
            c = http.client.HTTPConnection("127.0.0.1", r.proxy_port, timeout=10, source_address=(src, 0))
            c.request("GET", "/rc/x")
            resp = c.getresponse()
            resp.read()
            c.close()
            return resp.status, resp.getheader("retry-after")
        assert [get("127.0.0.1")[0] for _ in range(2)] == [200, 200]
        assert get("127.0.0.1") == (429, "60")
        assert [get("127.0.0.2")[0] for _ in range(2)] == [200, 200]  # another client has its own bucket
        assert get("127.0.0.2")[0] == 429


# ------------------------------------------------------------------------------------------ sticky sessions


def _get_as(port: int, path: str, headers: dict[str, str]) -> tuple[str, str | None]:
    status, h, body = _raw_get(port, path, headers)
    assert status == 200
    return body.decode().strip(), h.get("set-cookie")


def _wait_targets(r: RouterProc, n: int) -> None:
    deadline = time.monotonic() + 15
    while len(httpx.get(r.ui + "/api/routes", timeout=5).json()) != n:
        assert time.monotonic() < deadline, "the table did not change"
        time.sleep(0.1)


def test_sticky_cookie_keeps_the_instance_and_moves_only_its_clients(b1: PolicyBackend, b2: PolicyBackend,
                                                                      tmp_path) -> None:  # type: ignore[no-untyped-def]
    opts = 'opts "sticky=cookie,name=S,maxage=1h,secure"'
    lines = {name: f"route add app /s/ http://127.0.0.1:{b.port}/ {opts}" for name, b in (("b1", b1), ("b2", b2))}
    f = tmp_path / "routes.txt"
    f.write_text("\n".join(lines.values()) + "\n")
    with RouterProc("-registry.backend", "file", "-registry.file.path", str(f), "-proxy.strategy", "rr") as r:
        clients: dict[str, str] = {}  # backend -> that client's cookie
        for _ in range(2):  # round robin: the first two new clients get one instance each
            served, cookie = _get_as(r.proxy_port, "/s/x", {})
            assert cookie is not None and cookie.startswith("S=")
            assert "Path=/s/" in cookie and "Max-Age=3600" in cookie and "HttpOnly" in cookie
            assert "Secure" in cookie and "SameSite=Lax" in cookie
            clients[served] = cookie.split(";")[0]
        assert set(clients) == {"b1", "b2"}
        for name, cookie in clients.items():  # each keeps its instance, whatever round robin says
            for _ in range(6):
                assert _get_as(r.proxy_port, "/s/x", {"Cookie": f"a=1; {cookie}"}) == (name, None)
        f.write_text(lines["b2"] + "\n")  # b1 leaves the table
        _wait_targets(r, 1)
        served, cookie = _get_as(r.proxy_port, "/s/x", {"Cookie": clients["b1"]})
        assert served == "b2" and cookie is not None and cookie.split(";")[0] != clients["b1"]  # re-pinned
        assert _get_as(r.proxy_port, "/s/x", {"Cookie": clients["b2"]}) == ("b2", None)  # b2's client: unmoved
        metrics = httpx.get(r.ui + "/metrics", timeout=5).text
        values = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines()
                  if ln.startswith("consul_router_sticky")}
        assert values == {"consul_router_sticky_hits_total": 13.0, "consul_router_sticky_repins_total": 1.0}


@pytest.fixture(scope="module")
def procs() -> Iterator[tuple[BackendProc, BackendProc]]:
    """Backends in their own processes: 10,000 requests should not queue behind the test's own GIL."""
    a, b = BackendProc("b1").start(), BackendProc("b2").start()
    yield a, b
    a.stop()
    b.stop()


def test_sticky_hash_canary_gets_ten_percent_of_10000_clients(procs: tuple[BackendProc, BackendProc]) -> None:
    """fabio #202's sticky canary: a 10% canary by weight, consistent hashing on a header; each of 10,000
    distinct users lands on one instance and stays there, and the canary gets 10% +- 1% of them."""
    opts = 'opts "sticky=hash,header=X-User"'
    b1, b2 = procs
    routes = "\\n".join([f"route add stable /k/ http://127.0.0.1:{b1.port}/ {opts}",
                         f"route add canary /k/ http://127.0.0.1:{b2.port}/ {opts}",
                         "route weight canary /k/ weight 0.1"])
    with RouterProc.static(routes) as r:
        users = [f"user-{i}" for i in range(10_000)]
        first = _serve_users(r.proxy_port, users)
        canary = sum(1 for v in first.values() if v == "b2")
        assert 900 <= canary <= 1100, canary
        again = _serve_users(r.proxy_port, users[:1000])
        assert all(again[u] == first[u] for u in again)  # sticky


def _serve_users(port: int, users: list[str], threads: int = 4) -> dict[str, str]:
    out: dict[str, str] = {}

    def run(part: list[str]) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for u in part:
            c.request("GET", "/k/x", headers={"X-User": u})
            resp = c.getresponse()
            out[u] = resp.read().decode().strip()
        c.close()

    ts = [threading.Thread(target=run, args=(users[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


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


def test_sticky_clients_of_a_dead_instance_move_and_only_they() -> None:
    """An instance that stops answering (killed: connects fail, it is retried elsewhere and ejected): its
    cookie clients are re-pinned and its hashed users spread over the others; everyone else stays put."""
    bs = [BackendProc(f"k{i}").start() for i in range(3)]
    try:
        lines = []
        for b in bs:
            lines.append(f'route add app /c/ http://127.0.0.1:{b.port}/ opts "sticky=cookie"')
            lines.append(f'route add app /h/ http://127.0.0.1:{b.port}/ opts "sticky=hash,header=X-User"')
        with RouterProc.static("\\n".join(lines), "-proxy.strategy", "rr") as r:
            cookies: dict[str, str] = {}
            for _ in range(3):
                served, cookie = _get_as(r.proxy_port, "/c/x", {})
                cookies[served] = cookie.split(";")[0]
            assert set(cookies) == {"k0", "k1", "k2"}
            users = [f"u{i}" for i in range(300)]
            before = {u: _get_as(r.proxy_port, "/h/x", {"X-User": u})[0] for u in users}
            assert set(before.values()) == {"k0", "k1", "k2"}
            bs[0].kill()
            served, cookie = _get_as(r.proxy_port, "/c/x", {"Cookie": cookies["k0"]})
            assert served in ("k1", "k2") and cookie is not None  # retried elsewhere and re-pinned there
            for name in ("k1", "k2"):
                assert _get_as(r.proxy_port, "/c/x", {"Cookie": cookies[name]}) == (name, None)
            after = {u: _get_as(r.proxy_port, "/h/x", {"X-User": u})[0] for u in users}
            moved = {u for u in users if after[u] != before[u]}
            assert moved == {u for u in users if before[u] == "k0"}
            assert {after[u] for u in moved} == {"k1", "k2"}
    finally:
        for b in bs:
            b.stop()
