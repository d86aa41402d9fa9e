"""fabio's proxy/http_integration_test.go, row by row, end to end: real router processes on static routes in
front of real HTTP(S) servers (tests/fabio/e2e.py). fabio's tests give the proxy a Lookup function that
returns one target for every request; here each row gets a route of its own (a host or a path), four
routers serve them all, and the rows that need one router's flags share it.

Adaptations: fabio's ProxyHost routes name hosts that its test dialer sends to the test server (`a.com`);
ours name the servers themselves, so `host=dst` sends their `127.0.0.1:port`. fabio's request-id row mocks
the UUID; ours checks that a fresh UUID arrives. The access-log row cannot mock the clock of another
process: its time fields are checked for consistency end to end, and for fabio's exact text with a frozen
clock on the same formatter.
"""

from __future__ import annotations

import gzip
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from router.proxy.accesslog import Entry, Tap, compile_format
from tests.fabio.e2e import Server, echo_host, get, raw_get, self_signed, text, tls_context
from tests.fabio.rows import Outcome, differs, row, table
from tests.router_proc import RouterProc, free_port

FILE = "proxy/http_integration_test.go"
HELLO = b"Hello World"
HELLO_GZ = gzip.compress(HELLO, mtime=0)
LOG_BODY = "f" + "o" * 72  # fabio's 73-byte upstream answer
FIELDS = ["remote_addr", "remote_host", "remote_port", "request", "request_args", "request_host", "request_method",
          "request_proto", "request_scheme", "request_uri", "request_url", "response_body_size", "response_status",
          "response_time_ms", "response_time_ns", "response_time_us", "time_common", "time_rfc3339", "time_rfc3339_ms",
          "time_rfc3339_ns", "time_rfc3339_us", "time_unix_ms", "time_unix_ns", "time_unix_us", "upstream_addr",
          "upstream_host", "upstream_port", "upstream_request_scheme", "upstream_request_uri", "upstream_request_url",
          "upstream_service"]
LOG_FORMAT = ";".join(["header.X-Foo:$header.X-Foo", *(f"{f}:${f}" for f in FIELDS)])
LOG_FLAGS = ("-log.access.target", "stdout", "-log.access.format", LOG_FORMAT)


def served(fn):  # type: ignore[no-untyped-def]
    """A module-scoped fixture of one started Server."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[Server]:
        with fn() as s:
            yield s

    return fixture


async def only_bar(request: web.Request) -> web.StreamResponse:
    return web.Response(text="OK") if request.raw_path == "/bar" else web.Response(status=404)


def gzipped(content_type: str):  # type: ignore[no-untyped-def]
    return text(HELLO_GZ, Content_Type=content_type, Content_Encoding="gzip")


hdr = served(lambda: Server(text("OK")))
strip_srv = served(lambda: Server(only_bar))
echo1 = served(lambda: Server(echo_host))
echo2 = served(lambda: Server(echo_host))
log_srv = served(lambda: Server(text(LOG_BODY)))
GZIP_SERVERS = {  # host -> (content type, already gzip-encoded)
    "g1.test": ("text/plain", False), "g2.test": ("text/plain; charset=UTF-8", False),
    "g3.test": ("text/plain; charset=UTF-8", True), "g4.test": ("text/plain", False),
    "g5.test": ("text/plain", True), "g6.test": ("text/javascript", False),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """"verified": the router trusts it (SSL_CERT_FILE); "selfsigned": a certificate nobody trusts."""
    d = tmp_path_factory.mktemp("certs")
    return {name: self_signed(d, name) for name in ("verified", "selfsigned")}


@pytest.fixture(scope="module")
def tls_servers(certs: dict[str, tuple[Path, Path]]) -> Iterator[dict[str, Server]]:
    out = {name: Server(text("OK"), tls=tls_context(*pair)).start() for name, pair in certs.items()}
    yield out
    for s in out.values():
        s.stop()


@pytest.fixture(scope="module")
def gzip_servers() -> Iterator[dict[str, Server]]:
    out = {h: Server(gzipped(ct) if enc else text(HELLO, Content_Type=ct)).start()
           for h, (ct, enc) in GZIP_SERVERS.items()}
    yield out
    for s in out.values():
        s.stop()


@pytest.fixture(scope="module")
def main(hdr: Server, strip_srv: Server, tls_servers: dict[str, Server], gzip_servers: dict[str, Server],
         certs: dict[str, tuple[Path, Path]]) -> Iterator[RouterProc]:
    ca_file = certs["verified"][0]
    routes = [
        f"route add svc foo.com/ {hdr.url}/",
        f"route add svc rid.test/ {hdr.url}/",
        f"route add svc sts.test/ {hdr.url}/",
        f'route add svc acl.test/ {hdr.url}/ opts "allow=ip:127.0.0.0/8,ip:fe80::/10,ip:::1"',
        f'route add mock /foo/bar {strip_srv.url} opts "strip=/foo"',
        f'route add srv tls.test/ {tls_servers["verified"].url} opts "proto=https"',
        f'route add srv skip.test/ {tls_servers["selfsigned"].url} opts "proto=https tlsskipverify=true"',
        *(f"route add svc {h}/ {s.url}/" for h, s in gzip_servers.items()),
    ]
    flags = ["-proxy.localip", "1.1.1.1", "-proxy.header.clientip", "X-Forwarded-For",
             "-proxy.header.requestid", "X-Request-Id", "-proxy.noroutestatus", "999",
             "-registry.static.noroutehtml", "<html>503</html>", "-proxy.header.sts.maxage", "31536000",
             "-proxy.gzip.contenttype", "^text/plain(;.*)?$",
             "-proxy.compress.minsize", "0"]  # fabio compresses any size; these answer 11 bytes (compat.md)
    with RouterProc("-registry.backend", "static", "-registry.static.routes", "\n".join(routes), *flags,
                    env={"SSL_CERT_FILE": str(ca_file)}) as r:
        yield r


@pytest.fixture(scope="module")
def hosts(echo1: Server, echo2: Server, log_srv: Server) -> Iterator[RouterProc]:
    """TestProxyHost's table (rr), and the access log with compression of everything on."""
    routes = [f'route add mock /hostdst {echo1.url}/ opts "host=dst"',
              f'route add mock /hostcustom {echo1.url}/ opts "host=foo.com"',
              f'route add mock /hostcustom {echo2.url}/ opts "host=bar.com"',
              f"route add mock / {echo1.url}/",
              f"route add svc-a example.com/ {log_srv.url}"]
    with RouterProc.static("\n".join(routes), "-proxy.strategy", "rr", "-proxy.gzip.contenttype", ".*",
                           "-proxy.compress.minsize", "0", *LOG_FLAGS) as r:
        yield r


@pytest.fixture(scope="module")
def host_redirect(log_srv: Server) -> Iterator[RouterProc]:
    routes = ['route add https-redir *:80 https://$host$path opts "redirect=301"',
              f"route add svc-a example.com/ {log_srv.url}"]
    with RouterProc.static("\n".join(routes), *LOG_FLAGS) as r:
        yield r


@pytest.fixture(scope="module")
def path_redirect(log_srv: Server) -> Iterator[RouterProc]:
    routes = ['route add mock / http://a.com/$path opts "redirect=301"',
              'route add mock /foo http://a.com/abc opts "redirect=301"',
              'route add mock /bar http://b.com/$path opts "redirect=302 strip=/bar"',
              f"route add svc-a example.com/ {log_srv.url}"]
    with RouterProc.static("\n".join(routes), "-proxy.gzip.contenttype", "^$", *LOG_FLAGS) as r:
        yield r


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyProducesCorrectXForwardedSomethingHeader", [
    row("X-Forwarded-For and X-Forwarded-Host")]))
def test_x_forwarded_headers(outcome: Outcome, main: RouterProc, hdr: Server) -> None:
    assert get(main.url, Host="foo.com", **{"X-Forwarded-For": "3.3.3.3"}).status == 200
    seen = hdr.seen[-1][1]
    assert (seen["x-forwarded-for"], seen["x-forwarded-host"]) == ("3.3.3.3, 127.0.0.1", "foo.com")


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyRequestIDHeader", [row("X-Request-Id")]))
def test_request_id_header(outcome: Outcome, main: RouterProc, hdr: Server) -> None:
    ids = []
    for _ in range(2):
        assert get(main.url, Host="rid.test", **{"X-Request-Id": "client-sent"}).status == 200
        ids.append(uuid.UUID(hdr.seen[-1][1]["x-request-id"]))  # a UUID of ours, not the client's value
    assert ids[0] != ids[1]


@pytest.mark.parametrize("outcome", table(FILE, "TestProxySTSHeader", [row("HSTS on a TLS listener")]))
def test_sts_header(outcome: Outcome, hdr: Server, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    with RouterProc.static(f"route add svc / {hdr.url}/", "-proxy.addr", f"127.0.0.1:{port};cs=c;proto=https",
                           "-proxy.cs", f"cs=c;type=file;cert={cert};key={key}",
                           "-proxy.header.sts.maxage", "31536000", "-proxy.header.sts.subdomains", "true",
                           "-proxy.header.sts.preload", "true"):
        r = httpx.get(f"https://127.0.0.1:{port}/", verify=ssl.create_default_context(cafile=str(cert)))
        assert r.headers["strict-transport-security"] == "max-age=31536000; includeSubdomains; preload"


@pytest.mark.parametrize("outcome", table("proxy/http_headers_test.go", "TestAddResponseHeaders", [
    row("skip Strict-Transport-Security for non-TLS, if MaxAge greater than 0")]))
def test_no_sts_header_on_plain_requests(outcome: Outcome, main: RouterProc) -> None:
    a = get(main.url, Host="sts.test")
    assert a.status == 200 and "strict-transport-security" not in a.headers


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyChecksHeaderForAccessRules", [row("X-Forwarded-For 1.2.3.4")]))
def test_checks_header_for_access_rules(outcome: Outcome, main: RouterProc) -> None:
    assert get(main.url, Host="acl.test").status == 200  # the peer alone is allowed
    assert get(main.url, Host="acl.test", **{"X-Forwarded-For": "1.2.3.4"}).status == 403


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyNoRouteHTML", [row("<html>503</html>")]))
def test_no_route_html(outcome: Outcome, main: RouterProc) -> None:
    assert get(main.url + "/none", Host="none.test").body == b"<html>503</html>"


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyNoRouteStatus", [row("999")]))
def test_no_route_status(outcome: Outcome, main: RouterProc) -> None:
    assert get(main.url + "/none", Host="none.test").status == 999


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyStripsPath", [row("/foo/bar strip=/foo")]))
def test_strips_path(outcome: Outcome, main: RouterProc) -> None:
    a = get(main.url + "/foo/bar")
    assert (a.status, a.body) == (200, b"OK")


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyHTTPSUpstream", [row("proto=https, CA trusted")]))
def test_https_upstream(outcome: Outcome, main: RouterProc) -> None:
    a = get(main.url, Host="tls.test")
    assert (a.status, a.body) == (200, b"OK")


@pytest.mark.parametrize("outcome", table(FILE, "TestProxyHTTPSUpstreamSkipVerify", [
    row("proto=https tlsskipverify=true, unknown CA")]))
def test_https_upstream_skip_verify(outcome: Outcome, main: RouterProc) -> None:
    a = get(main.url, Host="skip.test")
    assert (a.status, a.body) == (200, b"OK")


HOST = [row("host eq dst", "/hostdst", ["dst"]), row("no host", "/", ["proxy"]),
        row("host is custom", "/hostcustom", ["foo.com", "bar.com"])]


@pytest.mark.parametrize(("uri", "want", "outcome"), table(FILE, "TestProxyHost", HOST))
def test_proxy_host(uri: str, want: list[str], outcome: Outcome, hosts: RouterProc, echo1: Server) -> None:
    names = {"dst": echo1.url.removeprefix("http://"), "proxy": f"127.0.0.1:{hosts.proxy_port}"}
    for expected in outcome.want(want):
        a = get(hosts.url + uri)
        assert (a.status, a.body.decode()) == (200, names.get(expected, expected))


@pytest.mark.parametrize("outcome", table(FILE, "TestHostRedirect", [row("/baz")]))
def test_host_redirect(outcome: Outcome, host_redirect: RouterProc) -> None:
    a = get(host_redirect.url + "/baz", Host="c.com")
    assert (a.status, a.headers["location"]) == (301, "https://c.com/baz")


PATHS = [row("/", "/", 301, "http://a.com/"), row("/aaa/bbb", "/aaa/bbb", 301, "http://a.com/aaa/bbb"),
         row("/foo", "/foo", 301, "http://a.com/abc"), row("/bar", "/bar", 302, "http://b.com/"),
         row("/bar/aaa", "/bar/aaa", 302, "http://b.com/aaa")]


@pytest.mark.parametrize(("req", "code", "location", "outcome"), table(FILE, "TestPathRedirect", PATHS))
def test_path_redirect(req: str, code: int, location: str, outcome: Outcome, path_redirect: RouterProc) -> None:
    a = get(path_redirect.url + req)
    assert (a.status, a.headers["location"]) == (code, location)


def frozen_fields() -> dict[str, str]:
    """fabio's mocked clock on our formatter: the request ends 2016-01-01T00:00:01.123456789Z after
    1.111111111 s (TZ=UTC, as fabio's test clock)."""
    e = Entry({"headers": []}, Tap(lambda m: None), None, 1.111111111)
    e.end_ns = 1451606401123456789
    parts = compile_format(";".join(f"{f}:${f}" for f in FIELDS if f.startswith(("time_", "response_time"))))
    return dict(p.split(":", 1) for p in "".join(g(e) for g in parts).split(";"))


FROZEN = {"response_time_ms": "1.111", "response_time_ns": "1.111111111", "response_time_us": "1.111111",
          "time_common": "01/Jan/2016:00:00:01 +0000", "time_rfc3339": "2016-01-01T00:00:01Z",
          "time_rfc3339_ms": "2016-01-01T00:00:01.123Z", "time_rfc3339_ns": "2016-01-01T00:00:01.123456789Z",
          "time_rfc3339_us": "2016-01-01T00:00:01.123456Z", "time_unix_ms": "1451606401123",
          "time_unix_ns": "1451606401123456789", "time_unix_us": "1451606401123456"}

LOG = [row("uncompressed response", "host_redirect", "", 73),
       row("compression enabled but no match", "path_redirect", "gzip", 73),
       row("compression enabled and active", "hosts", "gzip", 28,
           outcome=differs("zlib's deflate, not Go's: the same format in other bytes", ours=24))]


@pytest.mark.parametrize(("router_name", "accept", "size", "outcome"), table(FILE, "TestProxyLogOutput", LOG))
def test_proxy_log_output(router_name: str, accept: str, size: int, outcome: Outcome, request: pytest.FixtureRequest,
                          log_srv: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    router: RouterProc = request.getfixturevalue(router_name)
    headers = {"Host": "example.com", "X_Foo": "bar", **({"Accept_Encoding": accept} if accept else {})}
    before = time.time_ns()
    answer, client_port = raw_get(router.proxy_port, "/foo?x=y", **headers)
    assert answer.status == 200
    deadline = time.monotonic() + 5
    while not (lines := [x for x in router.output().splitlines() if x.startswith("header.X-Foo:bar;")]):
        assert time.monotonic() < deadline, router.output()[-2000:]
        time.sleep(0.05)
    got = dict(part.split(":", 1) for part in lines[-1].split(";"))
    up = f"127.0.0.1:{log_srv.port}"
    want = {"header.X-Foo": "bar", "remote_addr": f"127.0.0.1:{client_port}", "remote_host": "127.0.0.1",
            "remote_port": str(client_port), "request": "GET /foo?x=y HTTP/1.1", "request_args": "x=y",
            "request_host": "example.com", "request_method": "GET", "request_proto": "HTTP/1.1",
            "request_scheme": "http", "request_uri": "/foo?x=y", "request_url": "http://example.com/foo?x=y",
            "response_body_size": str(outcome.want(size)), "response_status": "200", "upstream_addr": up,
            "upstream_host": "127.0.0.1", "upstream_port": str(log_srv.port), "upstream_request_scheme": "http",
            "upstream_request_uri": "/foo?x=y", "upstream_request_url": f"http://{up}/foo?x=y",
            "upstream_service": "svc-a"}
    assert {k: got[k] for k in want} == want
    # the clock of another process: formats as fabio's, one instant, within the request
    unix_ns = int(got["time_unix_ns"])
    assert before <= unix_ns <= time.time_ns()
    assert (got["time_unix_us"], got["time_unix_ms"]) == (str(unix_ns // 1000), str(unix_ns // 1_000_000))
    assert got["time_rfc3339_ns"][20:29] == f"{unix_ns % 10**9:09d}"
    assert got["time_rfc3339_ms"] == got["time_rfc3339_ns"][:23] + got["time_rfc3339_ns"][29:]
    for f, digits in (("response_time_ms", 3), ("response_time_us", 6), ("response_time_ns", 9)):
        assert re.fullmatch(rf"\d+\.\d{{{digits}}}", got[f]), (f, got[f])
    assert float(got["response_time_ns"]) < 5
    # and fabio's exact text for its mocked clock
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert frozen_fields() == FROZEN
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


GZ = [  # content of the upstream, Accept-Encoding, Content-Encoding of the answer, its body decoded
    row("plain body - compressed response", "g1.test", "gzip", "gzip"),
    row("plain body - compressed response (with charset)", "g2.test", "gzip", "gzip"),
    row("compressed body - compressed response", "g3.test", "gzip", "gzip"),
    row("plain body - plain response", "g4.test", "", ""),
    row("compressed body - plain response", "g5.test", "", ""),
    row("plain body - plain response (no match)", "g6.test", "gzip", ""),
]


@pytest.mark.parametrize(("host", "accept", "encoding", "outcome"), table(FILE, "TestProxyGzipHandler", GZ))
def test_proxy_gzip_handler(host: str, accept: str, encoding: str, outcome: Outcome, main: RouterProc) -> None:
    a = get(main.url, Host=host, **({"Accept-Encoding": accept} if accept else {}))
    assert a.status == 200
    assert a.headers.get("content-encoding", "") == outcome.want(encoding)
    body = gzip.decompress(a.body) if encoding else a.body
    assert body == HELLO
    if GZIP_SERVERS[host][1] and encoding:  # an encoded answer passes as it is
        assert a.body == HELLO_GZ

