"""Route options and proxy.header.* through the real proxy (static routes, no Consul).

host=, proto=https + tlsskipverify, redirect with $path/$host and the loop guard, allow=/deny=, auth=,
request-id / client-ip headers that Connection cannot remove, and percent-encoded dot segments.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc, free_port


class _TLSHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = f"tls {self.path} host={self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An HTTPS server with a self-signed certificate made now with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TLSHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()


backend = module_backend("opt")


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("auth") / "users.htpasswd"
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"shapw").digest()).decode()  # noqa: S324 - htpasswd -s format
    bc = bcrypt.hashpw(b"bcpw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    apr1 = "$apr1$xyz$HXgo9gtz4gpj4JWTLYmjB0"  # `openssl passwd -apr1 -salt xyz secret` (htpasswd's default)
    p.write_text(f"alice:{bc}\nbob:{sha}\ncarol:{apr1}\ndave:plaintext\n")
    return p


@pytest.fixture(scope="module")
def router(backend: Backend, tls_backend: int, htpasswd: Path) -> Iterator[RouterProc]:
    b = f"http://127.0.0.1:{backend.port}/"
    routes = "\n".join([
        f"route add svc /plain {b}",
        f'route add svc /dst {b} opts "host=dst"',
        f'route add svc /named {b} opts "host=api.internal"',
        f'route add svc /tls https://127.0.0.1:{tls_backend}/ opts "tlsskipverify=true"',
        f'route add svc /tlsopt http://127.0.0.1:{tls_backend}/ opts "proto=https tlsskipverify=true"',
        f"route add svc /tlsverify https://127.0.0.1:{tls_backend}/",
        'route add svc /r https://$host$path opts "redirect=301"',
        'route add svc /rs https://x.test/$path opts "redirect=302"',
        'route add svc /rf https://x.test/fixed opts "redirect=302"',
        'route add svc /rq https://x.test/$path?src=tag opts "redirect=302"',
        f'route add svc /bad200 {b} opts "redirect=200"',
        f"route add svc /lp {b}",
        'route add svc loop.test/ https://loop.test$path opts "redirect=308"',
        'route add svc onlyloop.test/ https://onlyloop.test$path opts "redirect=301"',
        f'route add svc /allow {b} opts "allow=ip:127.0.0.0/8,ip:::1"',
        f'route add svc /deny {b} opts "deny=ip:10.0.0.0/8,ip:192.168.1.1"',
        f'route add svc /both {b} opts "allow=ip:127.0.0.1 deny=ip:10.0.0.0/8"',
        f'route add svc /auth {b} opts "auth=team"',
        f'route add svc /noscheme {b} opts "auth=missing"',
        f'route add svc /odd {b} opts "foo=bar blimp"',
    ])
    with RouterProc(
        "-registry.backend", "static", "-registry.static.routes", routes,
        "-proxy.header.requestid", "X-Request-Id", "-proxy.header.clientip", "X-Client-Ip",
        "-proxy.header.tls", "X-Tls", "-proxy.header.tls.value", "on",
        "-proxy.auth", f"name=team;type=basic;file={htpasswd};realm=Team Realm",
    ) as r:
        yield r


def last(backend: Backend) -> dict[str, str]:
    return backend.requests[-1].headers


def raw_request(router: RouterProc, target: str, host: str) -> tuple[int, dict[str, str], bytes]:
    """One GET with the request target sent byte for byte (an HTTP client would normalise it)."""
    with socket.create_connection(("127.0.0.1", router.proxy_port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_host_option(router: RouterProc, backend: Backend) -> None:
    httpx.get(router.url + "/plain", headers={"Host": "client.example"})
    assert last(backend)["host"] == "client.example"  # passed through by default
    httpx.get(router.url + "/dst", headers={"Host": "client.example"})
    assert last(backend)["host"] == f"127.0.0.1:{backend.port}"
    httpx.get(router.url + "/named")
    assert last(backend)["host"] == "api.internal"


def test_https_upstream(router: RouterProc, tls_backend: int) -> None:
    r = httpx.get(router.url + "/tls/x")
    assert r.status_code == 200 and r.text.startswith("tls /tls/x")
    r = httpx.get(router.url + "/tlsopt/y")  # proto=https turns the http:// target into https
    assert r.status_code == 200 and r.text.startswith("tls /tlsopt/y")
    assert httpx.get(router.url + "/tlsverify").status_code == 502  # self-signed, verification on


@pytest.mark.parametrize(("target", "host", "location"), [
    ("/r/a?q=1", "site.test:8080", "https://site.test:8080/r/a?q=1"),  # $host: the request's Host, port kept
    ("/r/a?q=1", "site.test", "https://site.test/r/a?q=1"),
    ("/rs/a%2Fb%25c?q=1", "h", "https://x.test/rs/a%2Fb%25c?q=1"),  # no "//" before $path; raw encoding kept
    ("/rf/a?q=1", "h", "https://x.test/fixed"),                     # no $path: no request path, no query
    ("/rq/a?q=1", "h", "https://x.test/rq/a?src=tag"),              # the URL's own query wins
])
def test_redirect_location(router: RouterProc, target: str, host: str, location: str) -> None:
    status, headers, _ = raw_request(router, target, host)
    assert status in (301, 302) and headers["location"] == location


def test_redirect_with_a_non_3xx_code_is_proxied(router: RouterProc, backend: Backend) -> None:
    """As in fabio: redirect=200 is ignored (an error is logged) and the route goes to its target."""
    r = httpx.get(router.url + "/bad200/x")
    assert r.status_code == 200 and backend.requests[-1].path == "/bad200/x"
    assert "redirect='200'" in router.output()


def test_redirect_and_loop_guard(router: RouterProc, backend: Backend) -> None:
    # same scheme/host/path as the request: that host is skipped and the next one (no-host /lp) is used
    r = httpx.get(router.url + "/lp", headers={"Host": "loop.test", "X-Forwarded-Proto": "https"})
    assert r.status_code == 200 and backend.requests[-1].path == "/lp"
    r = httpx.get(router.url + "/lp", headers={"Host": "loop.test"})  # http -> https is no loop
    assert r.status_code == 308 and r.headers["location"] == "https://loop.test/lp"
    # plain http: no loop, the redirect may be picked
    codes = {httpx.get(router.url + "/x", headers={"Host": "onlyloop.test"}).status_code for _ in range(2)}
    assert codes == {301}
    # a redirect to itself on the only matching host: skipped, then the no-host routes (none for /x) -> 404
    r = httpx.get(router.url + "/x", headers={"Host": "onlyloop.test", "X-Forwarded-Proto": "https"})
    assert r.status_code == 404


def test_allow_deny(router: RouterProc) -> None:
    assert httpx.get(router.url + "/allow").status_code == 200
    r = httpx.get(router.url + "/allow", headers={"X-Forwarded-For": "127.0.0.2, 10.1.2.3"})
    assert r.status_code == 403 and r.text == "access denied\n"  # every XFF element must be allowed
    assert httpx.get(router.url + "/deny").status_code == 200
    assert httpx.get(router.url + "/deny", headers={"X-Forwarded-For": "192.168.1.1"}).status_code == 403
    assert httpx.get(router.url + "/deny", headers={"X-Forwarded-For": "8.8.8.8, 10.9.9.9"}).status_code == 403
    assert httpx.get(router.url + "/deny", headers={"X-Forwarded-For": "8.8.8.8"}).status_code == 200
    # both rules on one route: the route is refused (and reported), never served unprotected
    assert httpx.get(router.url + "/both").status_code == 404
    errors = str(httpx.get(router.ui + "/api/status").json())
    assert "allow= and deny=" in errors


def test_basic_auth(router: RouterProc, backend: Backend) -> None:
    r = httpx.get(router.url + "/auth")
    assert r.status_code == 401 and r.text == "authorization failed\n"
    assert r.headers["www-authenticate"] == 'Basic realm="Team Realm"'
    r = httpx.get(router.url + "/auth", auth=("alice", "wrong"))
    assert r.status_code == 401 and "www-authenticate" not in r.headers
    assert httpx.get(router.url + "/auth", auth=("dave", "plaintext")).status_code == 401  # unsupported: no user
    assert httpx.get(router.url + "/auth", auth=("carol", "Secret")).status_code == 401
    for user, pw in (("alice", "bcpw"), ("bob", "shapw"), ("alice", "bcpw"), ("carol", "secret")):
        r = httpx.get(router.url + "/auth", auth=(user, pw))
        assert r.status_code == 200, (user, r.text)
        assert "authorization" not in last(backend)  # consumed here, not passed upstream
    assert httpx.get(router.url + "/noscheme", auth=("alice", "bcpw")).status_code == 401


def test_unknown_options_kept(router: RouterProc) -> None:
    assert httpx.get(router.url + "/odd").status_code == 200
    rows = [r for r in httpx.get(router.ui + "/api/routes").json() if r["path"] == "/odd"]
    assert rows and rows[0]["opts"] == "blimp= foo=bar"


def test_request_headers_survive_connection(router: RouterProc, backend: Backend) -> None:
    ids = set()
    for _ in range(2):
        httpx.get(router.url + "/plain", headers={
            "X-Request-Id": "client-chosen", "X-Client-Ip": "6.6.6.6", "X-Tls": "forged",
            "Connection": "keep-alive, X-Request-Id, X-Client-Ip, X-Forwarded-For, X-Real-Ip"})
        h = last(backend)
        assert h["x-request-id"] != "client-chosen" and len(h["x-request-id"]) == 36
        ids.add(h["x-request-id"])
        assert h["x-client-ip"] == "127.0.0.1"
        assert "x-tls" not in h  # plain request: the TLS header is removed
        assert h["x-forwarded-for"] == "127.0.0.1" and h["x-real-ip"] == "127.0.0.1"
    assert len(ids) == 2


def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize(("raw", "routed"), [
    ("/allow/%2e%2e/plain/a", "/plain/a"),
    ("/allow/%2E%2E/plain/", "/plain/"),
    ("//plain//a/./b", "/plain/a/b"),
    ("/plain/a/b/../c", "/plain/a/c"),
])
def test_path_normalisation(router: RouterProc, backend: Backend, raw: str, routed: str) -> None:
    status, _ = _raw_get(router.proxy_port, raw)
    assert status == 200  # /allow would also be 200 from loopback, so check where it went
    assert backend.requests[-1].path == routed


def test_percent_dots_do_not_bypass_deny(router: RouterProc) -> None:
    status, _ = _raw_get(router.proxy_port, "/plain/%2e%2e/deny")
    assert status == 200  # /deny from 127.0.0.1 is allowed; the point is it is routed as /deny:
    status, _ = _raw_get(router.proxy_port, "/plain/%2e%2e/both")
    assert status == 404  # the refused /both route, not /plain


def test_unused_port_is_free() -> None:
    assert free_port() > 0


def test_tls_request_headers_and_hsts(backend: Backend) -> None:
    """A TLS request (scheme https in the ASGI scope) gets the TLS header upstream and HSTS back."""
    import asyncio

    from router.proxy.handler import ProxyApp
    from router.proxy.headers import ForwardingHeaders
    from router.table.routecmd import parse
    from router.table.state import RouterState

    state = RouterState()
    cmds, errors = parse(f"route add svc /plain http://127.0.0.1:{backend.port}/", source="t")
    assert not errors
    state.apply({}, cmds)
    fwd = ForwardingHeaders(tls_header="X-Tls", tls_value="on", sts_maxage=300, sts_subdomains=True,
                            sts_preload=True)
    app = ProxyApp(state, forwarding=fwd)
    sent: list[dict] = []

    async def run(scheme: str) -> None:
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": "/plain", "raw_path": b"/plain", "query_string": b"",
                 "scheme": scheme, "http_version": "1.1", "client": ("127.0.0.1", 1),
                 "headers": [(b"host", b"h"), (b"x-tls", b"forged")]}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: dict) -> None:
            sent.append(msg)

        await app.handle(scope, receive, send)
        await app.upstream.close()

    asyncio.run(run("https"))
    assert sent[0]["status"] == 200
    assert (b"strict-transport-security", b"max-age=300; includeSubdomains; preload") in sent[0]["headers"]
    assert last(backend)["x-tls"] == "on" and last(backend)["x-forwarded-proto"] == "https"
    asyncio.run(run("http"))
    assert all(n != b"strict-transport-security" for n, _ in sent[0]["headers"])
    assert "x-tls" not in last(backend)


def test_unknown_option_is_logged_once(router: RouterProc) -> None:
    assert router.output().count("route option 'foo'") == 1
    assert "route option 'strip'" not in router.output()


def test_a_route_to_the_router_itself_is_a_508_not_a_runaway_loop(backend: Backend) -> None:
    """A target that is the router's own listener (a misregistered service, a chain of routers back to
    this one): each pass adds this router's Via entry, and the fifth pass is answered 508 instead of
    forwarded again, so the loop ends at once and every other route keeps working."""
    r = RouterProc("-registry.backend", "static")
    r.flags += ["-registry.static.routes",
                f"route add self /loop http://127.0.0.1:{r.proxy_port}/\nroute add b /b http://127.0.0.1:{backend.port}/"]
    with r:
        resp = httpx.get(r.url + "/loop/x", timeout=20)
        assert resp.status_code == 508 and "routing loop" in resp.text
        assert resp.headers.get("content-type", "").startswith("text/plain")
        ok = httpx.get(r.url + "/b/x", timeout=5)
        assert ok.status_code == 200 and ok.headers["x-backend"] == backend.name
        assert backend.requests[-1].headers["via"].startswith("1.1 consul-router-")  # the upstream sees it
        assert "routing loop" in r.output()
