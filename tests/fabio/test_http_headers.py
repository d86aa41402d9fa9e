"""fabio's proxy/http_headers_test.go, row by row: the forwarding headers added to a request
(TestAddHeaders), the HSTS response header (TestAddResponseHeaders) and X-Forwarded-Port (TestLocalPort).

Pure rows on router/proxy/headers.py, which builds the whole upstream header list in one place. fabio's
addHeaders leaves X-Forwarded-For to Go's ReverseProxy (which appends the peer address, as
tests/fabio/test_http_integration.py checks end to end), and its rows leave the request's Proto empty,
which a request read from a connection never has: so X-Forwarded-For gets the peer address and Forwarded
ends in `; httpproto=http/1.1` here, as fabio's own "set httpproto on Forwarded" row shows.
"""

from __future__ import annotations

import pytest

from router.proxy.headers import ForwardingHeaders
from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fabio.rows import Outcome, na, record, row, table

FILE = "proxy/http_headers_test.go"


def target(strip: str = ""):  # type: ignore[no-untyped-def]
    opts = f' opts "strip={strip}"' if strip else ""
    cmds, _ = parse(f"route add svc / http://upstream:8080/{opts}")
    tbl, errors = TableBuilder().update(manual=cmds)
    assert errors == []
    return next(iter(tbl.iter_targets()))


def request_headers(remote: str, scheme: str = "http", headers: dict | None = None, host: str = "",
                    cfg: dict | None = None, strip: str = "", tls: dict | None = None) -> dict[str, str]:
    ip, _, port = remote.rpartition(":")
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if host:
        raw.append((b"host", host.encode()))
    scope = {"type": "http", "scheme": scheme, "http_version": "1.1", "client": (ip, int(port)), "headers": raw,
             "path": "/", "raw_path": b"/", "method": "GET"}
    if tls:
        scope["extensions"] = {"tls": tls}
    out, _ = ForwardingHeaders(**(cfg or {})).request_headers(scope, host, target(strip))
    got: dict[str, str] = {}
    for name, value in out:
        got[name] = value
    got.pop("host", None)
    got.pop("user-agent", None)  # set to "" so that no default is sent, as Go's ReverseProxy does
    return got


def fabio_view(want: dict[str, str], remote: str) -> dict[str, str]:
    out = {k.lower(): v for k, v in want.items()}
    out.setdefault("x-forwarded-for", remote.rpartition(":")[0])
    out.pop("upgrade", None)  # written by the tunnel (router/proxy/websocket.py), not by the header builder
    if "forwarded" in out and "httpproto=" not in out["forwarded"]:
        out["forwarded"] += "; httpproto=http/1.1"
    return out


R = "1.2.3.4:5555"
PLAIN = {"Forwarded": "for=1.2.3.4; proto=http", "X-Forwarded-Proto": "http", "X-Forwarded-Port": "80",
         "X-Real-Ip": "1.2.3.4"}
SECURE = {"Forwarded": "for=1.2.3.4; proto=https", "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443",
          "X-Real-Ip": "1.2.3.4"}
ADD = [  # desc, kwargs of the request, expected headers
    row("error", {"remote": "1.2.3.4"}, "cannot parse 1.2.3.4",
        outcome=na("the peer of a socket always has a port; there is no address to fail on")),
    row("http request", {"remote": R, "strip": "/foo"}, {**PLAIN, "X-Forwarded-Prefix": "/foo"}),
    row("https request", {"remote": R, "scheme": "https"}, SECURE),
    row("ws request", {"remote": R, "scheme": "ws", "headers": {"Upgrade": "websocket"}},
        {"Forwarded": "for=1.2.3.4; proto=ws", "Upgrade": "websocket", "X-Forwarded-For": "1.2.3.4",
         "X-Forwarded-Proto": "http", "X-Forwarded-Port": "80", "X-Real-Ip": "1.2.3.4"}),
    row("wss request", {"remote": R, "scheme": "wss", "headers": {"Upgrade": "websocket"}},
        {"Forwarded": "for=1.2.3.4; proto=wss", "Upgrade": "websocket", "X-Forwarded-For": "1.2.3.4",
         "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "X-Real-Ip": "1.2.3.4"}),
    row("set client ip header", {"remote": R, "cfg": {"client_ip": "Client-IP"}}, {**PLAIN, "Client-Ip": "1.2.3.4"}),
    row("set Forwarded with localIP", {"remote": R, "cfg": {"local_ip": "5.6.7.8"}},
        {**PLAIN, "Forwarded": "for=1.2.3.4; proto=http; by=5.6.7.8"}),
    row("set Forwarded with localIP for https", {"remote": R, "scheme": "https", "cfg": {"local_ip": "5.6.7.8"}},
        {**SECURE, "Forwarded": "for=1.2.3.4; proto=https; by=5.6.7.8"}),
    row("set httpproto, tlsver and tlscipher on Forwarded for https",
        {"remote": R, "scheme": "https", "tls": {"tls_version": 0x0301, "cipher_suite": 0xC023}},
        {**SECURE, "Forwarded": "for=1.2.3.4; proto=https; httpproto=http/1.1; tlsver=tls10; tlscipher=0xc023"}),
    row("set httpproto on Forwarded", {"remote": R},
        {**PLAIN, "Forwarded": "for=1.2.3.4; proto=http; httpproto=http/1.1"}),
    row("extend Forwarded with localIP",
        {"remote": R, "headers": {"Forwarded": "for=9.9.9.9; proto=http; by=8.8.8.8"}, "cfg": {"local_ip": "5.6.7.8"}},
        {**PLAIN, "Forwarded": "for=9.9.9.9; proto=http; by=8.8.8.8; by=5.6.7.8"}),
    row("set tls header", {"remote": R, "scheme": "https", "cfg": {"tls_header": "Secure"}}, {**SECURE, "Secure": ""}),
    row("set tls header with value",
        {"remote": R, "scheme": "https", "cfg": {"tls_header": "Secure", "tls_value": "true"}},
        {**SECURE, "Secure": "true"}),
    row("overwrite tls header for https, when set",
        {"remote": R, "scheme": "https", "headers": {"Secure": "on"}, "cfg": {"tls_header": "Secure", "tls_value": "true"}},
        {**SECURE, "Secure": "true"}),
    row("drop tls header for http, when set",
        {"remote": R, "headers": {"Secure": "on"}, "cfg": {"tls_header": "Secure", "tls_value": "true"}}, PLAIN),
    row("do not overwrite X-Forwarded-Proto, if present", {"remote": R, "headers": {"X-Forwarded-Proto": "some value"}},
        {**PLAIN, "Forwarded": "for=1.2.3.4; proto=some value", "X-Forwarded-Proto": "some value"}),
    row("set scheme from X-Forwarded-Proto, if present and Forwarded is missing",
        {"remote": R, "headers": {"X-Forwarded-Proto": "some value"}},
        {**PLAIN, "Forwarded": "for=1.2.3.4; proto=some value", "X-Forwarded-Proto": "some value"}),
    row("set scheme from Forwarded, if present and X-Forwarded-Proto is missing",
        {"remote": R, "headers": {"Forwarded": "for=1.2.3.4; proto=some value"}},
        {**PLAIN, "Forwarded": "for=1.2.3.4; proto=some value", "X-Forwarded-Proto": "some value"}),
    row("do not modify scheme when both Forwarded and X-Forwarded-Proto are present",
        {"remote": R, "headers": {"Forwarded": "for=1.2.3.4; proto=some value", "X-Forwarded-Proto": "other value"}},
        {**PLAIN, "Forwarded": "for=1.2.3.4; proto=some value", "X-Forwarded-Proto": "other value"}),
    row("set X-Forwarded-Port from Host", {"remote": R, "host": "5.6.7.8:1234"},
        {**PLAIN, "X-Forwarded-Host": "5.6.7.8:1234", "X-Forwarded-Port": "1234"}),
    row("set X-Forwarded-Port from Host for https", {"remote": R, "host": "5.6.7.8:1234", "scheme": "https"},
        {**SECURE, "X-Forwarded-Host": "5.6.7.8:1234", "X-Forwarded-Port": "1234"}),
    row("do not overwrite X-Forwarded-Port header, if present", {"remote": R, "headers": {"X-Forwarded-Port": "4444"}},
        {**PLAIN, "X-Forwarded-Port": "4444"}),
    row("set X-Forwarded-Host from Host", {"remote": R, "host": "5.6.7.8:1234"},
        {**PLAIN, "X-Forwarded-Host": "5.6.7.8:1234", "X-Forwarded-Port": "1234"}),
    row("do not overwrite X-Forwarded-Host, if present",
        {"remote": R, "host": "5.6.7.8:1234", "headers": {"X-Forwarded-Host": "9.10.11.12:1234"}},
        {**PLAIN, "X-Forwarded-Host": "9.10.11.12:1234", "X-Forwarded-Port": "1234"}),
    row("do not overwrite X-Real-Ip, if present", {"remote": R, "headers": {"X-Real-Ip": "6.6.6.6"}},
        {**PLAIN, "X-Real-Ip": "6.6.6.6"}),
]


@pytest.mark.parametrize(("req", "want", "outcome"), table(FILE, "TestAddHeaders", ADD))
def test_add_headers(req: dict, want: dict, outcome: Outcome) -> None:
    assert request_headers(**req) == fabio_view(outcome.want(want), req["remote"])


STS = [
    row("set Strict-Transport-Security for TLS, if MaxAge greater than 0", {"sts_maxage": 31536000},
        "max-age=31536000"),
    row("set Strict-Transport-Security for TLS, if MaxAge greater than 0 with options",
        {"sts_maxage": 31536000, "sts_preload": True, "sts_subdomains": True},
        "max-age=31536000; includeSubdomains; preload"),
]


@pytest.mark.parametrize(("cfg", "want", "outcome"), table(FILE, "TestAddResponseHeaders", STS))
def test_add_response_headers(cfg: dict, want: str, outcome: Outcome) -> None:
    """A TLS response gets HSTS (its skip for plain requests is the third row, through a router process in
    tests/fabio/test_http_integration.py, since the proxy decides that before calling the builder)."""
    headers = ForwardingHeaders(**cfg).tls_response_headers([(b"strict-transport-security", b"max-age=1")])
    assert headers == [(b"strict-transport-security", outcome.want(want).encode())]


LOCAL_PORT = [
    row("0 nil request", None, False, "", outcome=na("a request always exists here")),
    row("1 empty Host", "", False, "80"),
    row("2 Host :", ":", False, "80"),
    row("3 Host 1.2.3.4:5678", "1.2.3.4:5678", False, "5678"),
    row("4 Host 1.2.3.4", "1.2.3.4", False, "80"),
    row("5 Host 1.2.3.4 TLS", "1.2.3.4", True, "443"),
    row("6 Host 1.2.3.4:", "1.2.3.4:", False, "80"),
    row("7 Host 1.2.3.4: TLS", "1.2.3.4:", True, "443"),
]


@pytest.mark.parametrize(("host", "tls", "want", "outcome"), table(FILE, "TestLocalPort", LOCAL_PORT))
def test_local_port(host: str, tls: bool, want: str, outcome: Outcome) -> None:
    got = request_headers(R, "https" if tls else "http", host=host)
    assert got["x-forwarded-port"] == outcome.want(want)


record(FILE, "TestUint16Base16", [
    row("0..9999", outcome=na("a Go formatting helper for tlscipher=; the Forwarded row above covers its use"))])
