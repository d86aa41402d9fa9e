"""Units of the proxy-side policies: compression choices, token buckets, rendezvous hashing, cookies."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass

import brotli
import pytest
import zstandard

from router.proxy.policies import compress, sticky
from router.proxy.policies.ratelimit import MAX_CLIENTS, Limiter, retry_after

TYPES = re.compile(compress.DEFAULT_TYPES)


@pytest.mark.parametrize(("accept", "allowed", "want"), [
    ("gzip", compress.ENCODINGS, "gzip"),
    ("gzip, deflate, br, zstd", compress.ENCODINGS, "zstd"),  # equal q: our order
    ("gzip, br", ("gzip", "br"), "gzip"),  # the route's order
    ("br;q=0.5, gzip", compress.ENCODINGS, "gzip"),
    ("gzip;q=0", compress.ENCODINGS, ""),  # an explicit refusal (fabio's substring test would compress)
    ("*", ("br", "gzip"), "br"),
    ("*;q=0, gzip", compress.ENCODINGS, "gzip"),
    ("identity", compress.ENCODINGS, ""),
    ("none", compress.ENCODINGS, ""),  # fabio's test sends this
    ("", compress.ENCODINGS, ""),
    ("x-gzip", compress.ENCODINGS, "gzip"),
    ("GZIP;Q=1.0", compress.ENCODINGS, "gzip"),
    ("gzip;q=bad", compress.ENCODINGS, ""),
])
def test_negotiate(accept: str, allowed: tuple[str, ...], want: str) -> None:
    assert compress.negotiate(accept, allowed) == want


P = compress.Plan(compress.ENCODINGS, TYPES, 100)
JSON = [(b"content-type", b"application/json"), (b"content-length", b"5000")]


@pytest.mark.parametrize(("method", "status", "headers", "want"), [
    ("GET", 200, JSON, "gzip"),
    ("HEAD", 200, JSON, ""),
    ("GET", 204, JSON, ""),
    ("GET", 304, JSON, ""),
    ("GET", 206, JSON, ""),
    ("GET", 200, [*JSON, (b"content-encoding", b"br")], ""),  # already encoded
    ("GET", 200, [*JSON, (b"content-encoding", b"identity")], "gzip"),
    ("GET", 200, [*JSON, (b"cache-control", b"public, No-Transform")], ""),
    ("GET", 200, [(b"content-type", b"application/json"), (b"content-length", b"99")], ""),  # too small
    ("GET", 200, [(b"content-type", b"image/png"), (b"content-length", b"5000")], ""),
    ("GET", 200, [(b"content-type", b"text/event-stream")], "gzip"),  # streamed, length unknown
    ("GET", 200, [(b"content-length", b"5000")], "gzip"),  # no type: sniffed from the body
    ("GET", 200, [], ""),  # no type and no length: nothing to judge before the headers go
])
def test_plan(method: str, status: int, headers: list, want: str) -> None:
    out, enc = compress.plan(P, method, "gzip", status, headers)
    assert enc == want
    assert (b"vary", b"Accept-Encoding") in out  # fabio adds it to every response while compression is on


def test_plan_vary_merged_not_duplicated() -> None:
    out, _ = compress.plan(P, "GET", "gzip", 200, [*JSON, (b"vary", b"Origin")])
    assert [v for n, v in out if n == b"vary"] == [b"Origin, Accept-Encoding"]
    out, _ = compress.plan(P, "GET", "gzip", 200, [*JSON, (b"vary", b"accept-encoding")])
    assert [v for n, v in out if n == b"vary"] == [b"accept-encoding"]
    out, enc = compress.plan(P, "GET", "", 200, JSON)
    assert enc == "" and (b"vary", b"Accept-Encoding") in out


@pytest.mark.parametrize("enc", compress.ENCODINGS)
def test_compress_all_and_stream_decode(enc: str) -> None:
    data = b'{"k": "value"}, ' * 5000
    whole = compress.compress_all(enc, data)
    assert _decode(enc, whole) == data and len(whole) < len(data) // 10
    c, flush, finish = compress._compressor(enc)
    parts = [c(data[:100]) + flush(), c(data[100:]) + flush(), finish()]
    assert _decode(enc, b"".join(parts)) == data


@pytest.mark.parametrize("enc", compress.ENCODINGS)
def test_flush_makes_each_chunk_decodable_alone(enc: str) -> None:
    """What SSE needs: after a flush, what was sent so far decodes to everything written so far."""
    c, flush, _ = compress._compressor(enc)
    first = c(b"data: 1\n\n") + flush()
    assert _decode_partial(enc, first) == b"data: 1\n\n"


def _decode(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        return gzip.decompress(data)
    if enc == "br":
        return brotli.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _decode_partial(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        import zlib
        return zlib.decompressobj(31).decompress(data)
    if enc == "br":
        d = brotli.Decompressor()
        return d.process(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize(("body", "want"), [
    (b"Hello World", b"text/plain; charset=utf-8"),
    (b"  <!DOCTYPE html><html>", b"text/html; charset=utf-8"),
    (b"<html>", b"text/html; charset=utf-8"),
    (b"<?xml version='1.0'?>", b"text/xml; charset=utf-8"),
    (b"\x00\x01binary", b"application/octet-stream"),
    (b"%PDF-1.4", b"application/pdf"),
])
def test_sniff(body: bytes, want: bytes) -> None:
    assert compress.sniff(body) == want


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_burst_then_rate() -> None:
    clock = Clock()
    lim = Limiter(10.0, 5.0, False, clock=clock)
    assert [lim.check("a") for _ in range(5)] == [0.0] * 5
    wait = lim.check("a")
    assert wait == pytest.approx(0.1) and retry_after(wait) == 1
    clock.t += 1.0  # ten tokens' worth of time, but the bucket holds five
    assert sum(lim.check("a") == 0.0 for _ in range(20)) == 5
    passed = 0
    for _ in range(1000):  # 50 s at 20 requests a second: 10 a second pass
        clock.t += 0.05
        passed += lim.check("a") == 0.0
    assert passed == pytest.approx(500, abs=1)


def test_per_client_buckets_and_worker_share() -> None:
    clock = Clock()
    lim = Limiter(10.0, 4.0, True, share=2, clock=clock)  # two workers: each holds half
    assert sum(lim.check("10.0.0.1") == 0.0 for _ in range(10)) == 2
    assert sum(lim.check("10.0.0.2") == 0.0 for _ in range(10)) == 2
    assert retry_after(lim.check("10.0.0.1")) == 1
    slow = Limiter(1 / 60, 1.0, False, clock=clock)
    assert slow.check("") == 0.0 and retry_after(slow.check("")) == 60


def test_per_client_map_is_bounded() -> None:
    clock = Clock()
    lim = Limiter(1.0, 1.0, True, clock=clock)
    for i in range(MAX_CLIENTS + 10):
        lim.check(f"c{i}")
        if i == MAX_CLIENTS // 2:
            clock.t += 10  # the first half has been quiet long enough to be refilled: dropped first
    assert len(lim.clients) <= MAX_CLIENTS
    assert "c0" not in lim.clients and f"c{MAX_CLIENTS + 9}" in lim.clients


@dataclass(frozen=True)
class T:
    service: str
    url: str
    weight: float


def _share(pool: list[T], n: int, keyfmt: str = "10.{}.{}.{}") -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(n):
        key = keyfmt.format(i >> 16 & 255, i >> 8 & 255, i & 255)
        t = pool[sticky.best_index(sticky.key_hash(key), pool, [False] * len(pool))]
        counts[t.url] = counts.get(t.url, 0) + 1
    return counts


def test_hash_canary_share_over_10000_clients() -> None:
    pool = [T("app", f"http://10.1.0.{i}:80/", 0.9 / 3) for i in range(3)] + [T("app", "http://canary:80/", 0.1)]
    counts = _share(pool, 10_000)
    assert 900 <= counts["http://canary:80/"] <= 1100  # 10% +- 1% of 10,000 distinct client addresses


def test_hash_only_departed_clients_move() -> None:
    pool = [T("app", f"http://10.1.0.{i}:80/", 0.25) for i in range(4)]
    keys = [f"user-{i}" for i in range(5000)]
    def pick(k: str, skip: list[bool]) -> str:
        return pool[sticky.best_index(sticky.key_hash(k), pool, skip)].url

    before = {k: pick(k, [False] * 4) for k in keys}
    gone = pool[2].url
    after = {k: pick(k, [False, False, True, False]) for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == gone} and moved
    assert all(after[k] != gone for k in keys)
    # and the moved clients spread over the others instead of piling onto one
    assert len({after[k] for k in moved}) == 3


def test_best_index_skips_ejected_and_weightless() -> None:
    pool = [T("a", f"u{i}", 1.0) for i in range(5)] + [T("a", "dead", 0.0)]
    for k in ("x", "y", "z"):
        h = sticky.key_hash(k)
        first = sticky.best_index(h, pool, [False] * 6)
        assert 0 <= first < 5
        skip = [i == first for i in range(6)]
        second = sticky.best_index(h, pool, skip)
        assert second not in (first, 5) and second >= 0
    assert sticky.best_index(1, pool, [True] * 5 + [False]) == -1  # only the weight-0 one is left


def test_cookie_value_and_set_cookie() -> None:
    hs = [(b"cookie", b"a=1; router_sticky=abc123; b=2"), (b"host", b"x")]
    assert sticky.cookie_value(hs, b"router_sticky") == "abc123"
    assert sticky.cookie_value(hs, b"other") == ""
    assert sticky.cookie_value([(b"cookie", b'router_sticky="q"')], b"router_sticky") == "q"

    @dataclass
    class Spec:
        cookie: str = "S"
        max_age: int = 3600
        httponly: bool = True
        secure: bool | None = True
        samesite: str = "Strict"

    assert sticky.set_cookie(Spec(), "v", "/api") == b"S=v; Path=/api; Max-Age=3600; HttpOnly; Secure; SameSite=Strict"
    assert sticky.set_cookie(Spec(max_age=0, httponly=False, secure=False, samesite=""), "v", "") == b"S=v; Path=/"
    auto = Spec(max_age=0, httponly=False, secure=None, samesite="")
    assert sticky.set_cookie(auto, "v", "/", tls=True) == b"S=v; Path=/; Secure"  # over TLS: Secure by default
    assert sticky.set_cookie(auto, "v", "/", tls=False) == b"S=v; Path=/"
    assert sticky.set_cookie(Spec(max_age=0, httponly=False, secure=False, samesite=""), "v", "/", tls=True) \
        == b"S=v; Path=/"  # secure=false says so


def test_target_id_is_stable_and_distinct() -> None:
    a = sticky.target_id("svc", "http://10.0.0.1:80/")
    assert a == sticky.target_id("svc", "http://10.0.0.1:80/") and len(a) == 12
    assert a != sticky.target_id("svc", "http://10.0.0.2:80/")


def test_plan_decodes_gzip_for_a_client_that_does_not_take_it() -> None:
    gz = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    assert compress.plan(P, "GET", "", 200, gz)[1] == compress.UNGZIP
    assert compress.plan(P, "GET", "gzip", 200, gz)[1] == ""  # it takes gzip: passed as it is
    assert compress.plan(P, "GET", "", 200, [*gz, (b"cache-control", b"no-transform")])[1] == ""
    assert compress.plan(P, "GET", "identity", 200, gz)[1] == compress.UNGZIP
    assert compress.plan(P, "GET", "br", 200, gz)[1] == compress.UNGZIP  # it does not take gzip
    assert compress.plan(P, "GET", "", 200, [(b"content-encoding", b"br")])[1] == ""  # only gzip is decoded
    assert compress.plan(P, "HEAD", "", 200, gz)[1] == ""
