"""Hostile HTTP through the real router over raw sockets (issue 7; docs/reliability.md "Hostile input").

Each refused request must get a 4xx whose body names the problem, the connection must be closed after
it (so bytes behind it cannot become a second, smuggled request), and the recording backend must see
nothing. Most framing errors are refused by uvicorn's llhttp parser, whose reason we pass on
(router/proxy/request_guard.py); the rest by check_request() in the app.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc
from tests.test_protocol import Conn

SMUGGLED = b"GET /public/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


backend = module_backend("h1")


@pytest.fixture(scope="module")
def router(backend: Backend) -> Iterator[RouterProc]:
    routes = f"route add svc /public http://127.0.0.1:{backend.port}/"
    with RouterProc.static(routes) as r:
        yield r


def exchange(router: RouterProc, raw: bytes, check_close: bool = False) -> tuple[int, dict[str, str], bytes, bool]:
    """Send raw bytes on a new connection; the first response and (check_close) whether the router then
    closed the connection; only asked where a close is expected, as a kept-alive one only times out."""
    c = Conn(router.proxy_port)
    try:
        c.send(raw)
        status, headers, body = c.response()
        closed = False
        if check_close:
            try:
                closed = not c.buf and not c._fill()
            except TimeoutError:
                closed = False
        return status, headers, body, closed
    finally:
        c.close()


def settle(router: RouterProc, backend: Backend) -> list[str]:
    """Paths the backend saw, after a marker request proves the router and backend are still working."""
    status, _, body, _ = exchange(router, b"GET /public/marker HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status == 200 and body == b"h1\n"
    return [s.path for s in backend.requests]


def head(*lines: bytes, version: bytes = b"1.1", target: bytes = b"/public/x", method: bytes = b"POST") -> bytes:
    return b"\r\n".join([method + b" " + target + b" HTTP/" + version, *lines, b"", b""])


REFUSED = {
    # framing / smuggling: llhttp refuses these before the app runs
    "cl-and-te": (head(b"Host: a", b"Content-Length: 4", b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
                  "can't be present with Content-Length"),
    "two-cl-equal": (head(b"Host: a", b"Content-Length: 3", b"Content-Length: 3") + b"abc", "Duplicate Content-Length"),
    "two-cl-differ": (head(b"Host: a", b"Content-Length: 3", b"Content-Length: 5") + b"abcde",
                      "Duplicate Content-Length"),
    "cl-list": (head(b"Host: a", b"Content-Length: 3, 3") + b"abc", "Content-Length"),
    "cl-plus": (head(b"Host: a", b"Content-Length: +3") + b"abc", "Content-Length"),
    "te-chunked-identity": (head(b"Host: a", b"Transfer-Encoding: chunked, identity") + b"0\r\n\r\n",
                            "Transfer-Encoding"),
    "te-xchunked": (head(b"Host: a", b"Transfer-Encoding: xchunked") + b"0\r\n\r\n", "Transfer-Encoding"),
    "te-identity": (head(b"Host: a", b"Transfer-Encoding: identity"), "Transfer-Encoding"),
    "te-tab-junk": (head(b"Host: a", b"Transfer-Encoding:\tchunked\t") + b"0\r\n\r\n", "Transfer-Encoding"),
    "te-space-before-colon": (head(b"Host: a", b"Transfer-Encoding : chunked") + b"0\r\n\r\n", "header field char"),
    "te-twice": (head(b"Host: a", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity") + b"0\r\n\r\n",
                 "Transfer-Encoding"),
    "bad-chunk-size": (head(b"Host: a", b"Transfer-Encoding: chunked") + b"zz\r\n\r\n", "chunk size"),
    # bytes RFC 9110 does not allow in names or values
    "name-ctl": (head(b"Host: a", b"X-B\x01d: 1", method=b"GET"), "header token"),
    "name-space": (head(b"Host: a", b"X Bad: 1", method=b"GET"), "header token"),
    "name-separator": (head(b"Host: a", b"X(Bad): 1", method=b"GET"), "header token"),
    "name-8bit": (head(b"Host: a", b"X-\xe9: 1", method=b"GET"), "header token"),
    "value-ctl": (head(b"Host: a", b"X-V: a\x01b", method=b"GET"), "header value char"),
    "value-nul": (head(b"Host: a", b"X-V: a\x00b", method=b"GET"), "header value char"),
    "value-del": (head(b"Host: a", b"X-V: a\x7fb", method=b"GET"), "header value char"),
    "value-bare-cr": (head(b"Host: a", b"X-V: a\rb", method=b"GET"), "after header value"),
    "value-bare-lf": (head(b"Host: a", b"X-V: a\nX-W: b", method=b"GET"), "after header value"),
    "obs-fold": (head(b"Host: a", b"X-V: a", b" b", method=b"GET"), "whitespace after header value"),
    "raw-ctl-in-path": (head(b"Host: a", method=b"GET", target=b"/public/a\x01b"), "url path"),
    "authority-form": (head(b"Host: example.com:443", method=b"CONNECT", target=b"example.com:443"),
                       "request target has no path"),
    "absolute-no-path": (head(b"Host: a", method=b"GET", target=b"http://example.com"), "request target has no path"),
    # refused by check_request() in the app
    "te-gzip-chunked": (head(b"Host: a", b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", "Transfer-Encoding"),
    "te-http10": (head(b"Host: a", b"Transfer-Encoding: chunked", version=b"1.0") + b"0\r\n\r\n", "HTTP/1.0"),
    "no-host": (head(method=b"GET"), "missing Host"),
    "two-hosts": (head(b"Host: a", b"Host: b", method=b"GET"), "more than one Host"),
    "absolute-form": (head(b"Host: a", method=b"GET", target=b"http://a/public/x"), "absolute-form"),
    "absolute-form-other-host": (head(b"Host: a", method=b"GET", target=b"http://internal/public/x"), "absolute-form"),
    "asterisk-not-options": (head(b"Host: a", method=b"GET", target=b"*"), "asterisk-form"),
    "nul-in-path": (head(b"Host: a", method=b"GET", target=b"/public/a%00b"), "control character"),
    "cr-in-path": (head(b"Host: a", method=b"GET", target=b"/public/a%0d%0aX-Injected:%201"), "control character"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_reason_closed_and_never_forwarded(router: RouterProc, backend: Backend, name: str) -> None:
    raw, reason = REFUSED[name]
    before = backend.hits
    status, headers, body, closed = exchange(router, raw + SMUGGLED, check_close=True)
    assert 400 <= status < 500, (status, body)
    assert reason.encode() in body, body
    assert headers.get("connection") == "close" and closed  # the smuggled bytes behind it are never read
    seen = settle(router, backend)
    assert seen[before:] == ["/public/marker"]  # neither the request nor the smuggled one reached the backend


def test_chunked_in_any_case_is_one_well_formed_request(router: RouterProc, backend: Backend) -> None:
    before = backend.hits
    raw = head(b"Host: a", b"Transfer-Encoding: CHUNKED", target=b"/public/echo") + b"3\r\nabc\r\n0\r\n\r\n"
    status, _, body, _ = exchange(router, raw)
    assert status == 200 and body == b"abc"
    assert [(s.path, s.body) for s in backend.requests[before:]] == [("/public/echo", b"abc")]


def test_pipelined_after_valid_body_is_a_separate_request(router: RouterProc, backend: Backend) -> None:
    """A Content-Length body followed by a second request: two requests, framed exactly as sent."""
    before = backend.hits
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", b"Content-Length: 3", target=b"/public/echo") + b"abc" + SMUGGLED)
        assert c.response()[2] == b"abc"
        assert c.response()[0] == 200
    finally:
        c.close()
    assert [(s.path, s.body) for s in backend.requests[before:]] == [("/public/echo", b"abc"), ("/public/smuggled", b"")]


def test_allowed_field_bytes_pass(router: RouterProc, backend: Backend) -> None:
    """HTAB inside a value and obs-text (bytes >= 0x80) are valid field content (RFC 9110 §5.5)."""
    status, _, _, _ = exchange(router, head(b"Host: a", b"X-V: a\tb\xe9c", method=b"GET", target=b"/public/fields"))
    assert status == 200
    assert backend.requests[-1].path == "/public/fields"


def test_http10_without_host_is_routed(router: RouterProc, backend: Backend) -> None:
    status, _, body, _ = exchange(router, head(method=b"GET", version=b"1.0", target=b"/public/old"))
    assert status == 200 and body == b"h1\n"
    assert backend.requests[-1].path == "/public/old"


def test_options_asterisk_is_answered_by_the_proxy(router: RouterProc, backend: Backend) -> None:
    before = backend.hits
    c = Conn(router.proxy_port)
    try:
        c.send(head(b"Host: a", method=b"OPTIONS", target=b"*"))
        status, headers, body = c.response()
        assert status == 200 and body == b"" and headers["content-length"] == "0"
        c.send(head(b"Host: a", method=b"GET", target=b"/public/after"))  # the connection stays usable
        assert c.response()[2] == b"h1\n"
    finally:
        c.close()
    assert [s.path for s in backend.requests[before:]] == ["/public/after"]


@pytest.mark.parametrize("target", [
    b"/public/../admin", b"/public/%2e%2e/admin", b"/public/%2E%2E/admin", b"/public%2f..%2fadmin",
    b"/public/..%2fadmin", b"/public/./../admin",
])
def test_dot_segments_cannot_leave_the_route(router: RouterProc, backend: Backend, target: bytes) -> None:
    """Only /public is routed: every spelling of /public/../admin is /admin, which has no route."""
    before = backend.hits
    status, _, body, _ = exchange(router, head(b"Host: a", method=b"GET", target=target))
    assert status == 404 and body == b"no route\n"
    assert settle(router, backend)[before:] == ["/public/marker"]


def test_encoded_dot_segments_are_forwarded_resolved(router: RouterProc, backend: Backend) -> None:
    """Routed as /public/y, so /public/y is what goes upstream, never the raw %2e%2e spelling."""
    status, _, _, _ = exchange(router, head(b"Host: a", method=b"GET", target=b"/public/%2e%2e/public/y?q=1"))
    assert status == 200
    assert backend.requests[-1].path == "/public/y?q=1"


def test_encoded_slash_routes_decoded_and_is_forwarded_as_sent(router: RouterProc, backend: Backend) -> None:
    """As fabio: routed on the decoded path (/public/admin -> the /public route), forwarded with %2f kept,
    because the raw path decodes to exactly the routed path."""
    status, _, _, _ = exchange(router, head(b"Host: a", method=b"GET", target=b"/public%2fadmin"))
    assert status == 200
    assert backend.requests[-1].path == "/public%2fadmin"


WS_HEAD = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n")


@pytest.mark.parametrize(("request_head", "want_status", "want_forwarded"), [
    (b"GET /public/%2e%2e/public/ws HTTP/1.1\r\nHost: a\r\n", 101, ["/public/ws"]),
    (b"GET /public/ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400, []),
    (b"GET /public/%00/ws HTTP/1.1\r\nHost: a\r\n", 400, []),
])
def test_websocket_upgrade_is_guarded_too(router: RouterProc, backend: Backend, request_head: bytes,
                                          want_status: int, want_forwarded: list[str]) -> None:
    before = backend.hits
    c = Conn(router.proxy_port)
    try:
        c.send(request_head + WS_HEAD + b"\r\n")
        status = c.response(head_only=True)[0]
    finally:
        c.close()
    forwarded = [p for p in settle(router, backend)[before:] if p != "/public/marker"]
    assert (status, forwarded) == (want_status, want_forwarded)
