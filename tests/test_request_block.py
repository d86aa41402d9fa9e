"""The encoded fast path for the upstream request head (ForwardingHeaders.request_block + prepare_block)
builds exactly the bytes the general path (request_headers + prepare) builds for the body the proxy sends
(none, or the client's stream), or declines."""

from __future__ import annotations

import pytest

from router.proxy.headers import ForwardingHeaders
from router.proxy.upstream_request import HeaderBlock, prepare, prepare_block
from router.table.routecmd import parse
from router.table.target import make_target


def _target(line: str):  # type: ignore[no-untyped-def]
    cmds, errors = parse(line, "static")
    assert not errors
    return make_target(cmds[0])


def _scope(headers: list[tuple[bytes, bytes]], *, scheme: str = "http", version: str = "1.1",
           client: tuple[str, int] | None = ("10.0.0.7", 5555), tls: dict | None = None) -> dict:
    scope = {"method": "POST", "headers": headers, "client": client, "scheme": scheme, "http_version": version}
    if tls is not None:
        scope["extensions"] = {"tls": tls}
    return scope


PLAIN = "route add svc /app http://127.0.0.1:8080/"
CASES = [
    # (name, headers, scope options, route line, forwarding options)
    ("wrk", [(b"host", b"example.com")], {}, PLAIN, {}),
    ("browser", [(b"host", b"example.com:8443"), (b"user-agent", b"Mozilla/5.0"), (b"accept", b"*/*"),
                 (b"accept-encoding", b"gzip, br"), (b"cookie", b"a=b; c=d"), (b"connection", b"keep-alive")],
     {}, PLAIN, {}),
    ("upload", [(b"host", b"h"), (b"content-length", b"12"), (b"content-type", b"text/plain")], {}, PLAIN, {}),
    ("empty length", [(b"host", b"h"), (b"content-length", b"0")], {}, PLAIN, {}),
    ("chunked", [(b"host", b"h"), (b"transfer-encoding", b"chunked")], {}, PLAIN, {}),
    ("hop-by-hop", [(b"host", b"h"), (b"keep-alive", b"300"), (b"te", b"trailers"), (b"upgrade", b"x")], {},
     PLAIN, {}),
    ("http/1.0", [(b"host", b"h")], {"version": "1.0"}, PLAIN, {}),
    ("no client address", [(b"host", b"h")], {"client": None}, PLAIN, {}),
    ("https", [(b"host", b"secure.example")], {"scheme": "https", "tls": {"tls_version": 0x0303,
                                                                        "cipher_suite": 0xC02F}}, PLAIN, {}),
    ("strip and host=", [(b"host", b"h")], {}, "route add svc /app http://10.1.1.1:81/ opts \"strip=/app host=dst\"",
     {}),
    ("via id and local ip", [(b"host", b"h"), (b"user-agent", b"curl")], {}, PLAIN,
     {"via_id": "consul-router-abcd", "local_ip": "192.0.2.1"}),
    ("latin-1 value", [(b"host", b"h"), (b"x-name", "Jürgen".encode("latin-1"))], {}, PLAIN, {}),
    ("duplicates", [(b"host", b"h"), (b"accept", b"a"), (b"accept", b"b")], {}, PLAIN, {}),
]


@pytest.mark.parametrize(("name", "headers", "opts", "route", "fwd"), CASES, ids=[c[0] for c in CASES])
def test_block_is_the_general_head(name: str, headers: list, opts: dict, route: str, fwd: dict) -> None:
    f = ForwardingHeaders(**fwd)
    target = _target(route)
    scope = _scope(headers, **opts)
    host = next(v.decode("latin-1") for n, v in headers if n == b"host")
    for _ in range(2):  # the second time from the cache
        block, has_body = f.request_block(scope, host, target, b"/p?q=1")
        general, general_body = f.request_headers(scope, host, target)
        assert isinstance(block, HeaderBlock)
        assert has_body == general_body
        body = _stream() if has_body else None  # what ProxyApp.serve sends: the client's body, or none
        key = (target.scheme, target.host, target.port, True)
        for method in ("POST", "GET"):
            want = prepare(method, f"{target.scheme}://{target.host}:{target.port}/p?q=1", general, body)
            got = prepare_block(method, key, block, body)
            if method == "POST":
                assert got.head == want.head
            assert (got.chunked, got.resendable, got.key) == (want.chunked, want.resendable, want.key)


async def _gen():  # type: ignore[no-untyped-def]
    yield b"x"


def _stream():  # type: ignore[no-untyped-def]
    return _gen()


DECLINED = [
    ("via", [(b"host", b"h"), (b"via", b"1.1 other")], {}),
    ("x-forwarded-for", [(b"host", b"h"), (b"x-forwarded-for", b"1.2.3.4")], {}),
    ("forwarded", [(b"host", b"h"), (b"forwarded", b"for=1.2.3.4")], {}),
    ("x-real-ip", [(b"host", b"h"), (b"x-real-ip", b"1.2.3.4")], {}),
    ("connection naming a header", [(b"host", b"h"), (b"connection", b"close, x-secret"), (b"x-secret", b"1")], {}),
    ("connection: close", [(b"host", b"h"), (b"connection", b"close")], {}),
    ("request id header configured", [(b"host", b"h")], {"request_id": "X-Request-Id"}),
]


@pytest.mark.parametrize(("name", "headers", "fwd"), DECLINED, ids=[c[0] for c in DECLINED])
def test_block_declines_what_request_headers_decides(name: str, headers: list, fwd: dict) -> None:
    f = ForwardingHeaders(**fwd)
    block, has_body = f.request_block(_scope(headers), "h", _target(PLAIN), b"/")
    assert (block, has_body) == (None, False)


def test_no_host_declines() -> None:
    block, _ = ForwardingHeaders().request_block(_scope([]), "", _target(PLAIN), b"/")
    assert block is None


def test_tail_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import router.proxy.headers as headers

    monkeypatch.setattr(headers, "TAILS_MAX", 3)
    f = ForwardingHeaders()
    target = _target(PLAIN)
    for i in range(10):
        block, _ = f.request_block(_scope([(b"host", b"h")], client=(f"10.0.0.{i}", 1)), "h", target, b"/")
        assert block is not None and f"x-real-ip: 10.0.0.{i}\r\n".encode() in block.head
    assert len(f._tails) <= 3
