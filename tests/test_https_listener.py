"""HTTPS listeners in the real router (`python -m router`, the router's own listener): certificates from a
`path` source picked by SNI, fabio's TLS request handling (`:443` host stripping, X-Forwarded-Proto https,
`proxy.header.tls`, HSTS, Forwarded tlsver/tlscipher), HTTP/2 by ALPN, https+tcp+sni and the PROXY
protocol on an HTTP listener; driven with curl (--cacert, --resolve, --http2) and openssl s_client.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.backends import Backend
from tests.router_proc import RouterProc, free_port

OWN = {"ROUTER_LISTENER": "own"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("b1").start()
    yield b
    b.stop()


def certs_dir(ca: trustme.CA, tmp: Path, *hosts: str) -> Path:
    d = tmp / "certs"
    d.mkdir(exist_ok=True)
    for i, h in enumerate(hosts):
        leaf = ca.issue_cert(h)
        (d / f"{i}-{h.replace('*', 'star')}-cert.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
        (d / f"{i}-{h.replace('*', 'star')}-key.pem").write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return d


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30)


def https_router(ca: trustme.CA, tmp: Path, routes: str, *flags: str, extra: str = "") -> tuple[RouterProc, int]:
    certs = certs_dir(ca, tmp, "a.example.com", "*.example.org")
    tport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", routes, env=OWN)
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};cs=mycerts{extra}",
                "-proxy.cs", f"cs=mycerts;type=path;cert={certs}", *flags]
    return r, tport


def test_https_with_sni_and_fabios_tls_headers(ca: trustme.CA, tmp_path: Path, backend: Backend) -> None:
    routes = (f"route add svc a.example.com/ http://127.0.0.1:{backend.port}/\n"
              f"route add svc x.example.org:443/ http://127.0.0.1:{backend.port}/\n")  # :443 stripped on TLS
    r, tport = https_router(ca, tmp_path, routes, "-proxy.header.tls", "X-Tls", "-proxy.header.tls.value", "on",
                            "-proxy.header.sts.maxage", "31536000", "-proxy.header.sts.subdomains", "true")
    with r:
        for host in ("a.example.com", "x.example.org"):  # curl believes it talks to port 443
            out = curl("--cacert", str(tmp_path / "ca.pem"), "--connect-to", f"{host}:443:127.0.0.1:{tport}",
                       "-D", "-", f"https://{host}/hello")
            assert out.returncode == 0, out.stderr
            assert "b1" in out.stdout and "strict-transport-security: max-age=31536000; includeSubdomains" in out.stdout
        seen = backend.requests[-1].headers
        assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-port"] == "443" and seen["x-tls"] == "on"
        assert "; tlsver=0x0304; tlscipher=0x130" in seen["forwarded"], seen["forwarded"]  # TLS 1.3 (fabio's hex)
        out = curl("--connect-to", f"a.example.com:80:127.0.0.1:{r.proxy_port}", "-D", "-", "-H", "X-Tls: forged",
                   "http://a.example.com/plain")
        assert "strict-transport-security" not in out.stdout.lower()  # HSTS and the TLS header only on TLS
        assert "x-tls" not in backend.requests[-1].headers and backend.requests[-1].headers["x-forwarded-proto"] == "http"


def test_tls12_forwarded_names_the_version_and_cipher(ca: trustme.CA, tmp_path: Path, backend: Backend) -> None:
    r, tport = https_router(ca, tmp_path, f"route add svc / http://127.0.0.1:{backend.port}/", extra=";tlsmax=tls12")
    with r:
        out = curl("--cacert", str(tmp_path / "ca.pem"), "--resolve", f"a.example.com:{tport}:127.0.0.1",
                   f"https://a.example.com:{tport}/")
        assert out.returncode == 0, out.stderr
        fwd = backend.requests[-1].headers["forwarded"]
        assert "; tlsver=tls12; tlscipher=0xc02" in fwd, fwd  # an ECDHE-ECDSA-AES-GCM suite (trustme's keys)


def test_http2_by_alpn_and_http11_for_clients_without_it(ca: trustme.CA, tmp_path: Path, backend: Backend) -> None:
    r, tport = https_router(ca, tmp_path, f"route add svc / http://127.0.0.1:{backend.port}/")
    with r:
        base = ["--cacert", str(tmp_path / "ca.pem"), "--resolve", f"a.example.com:{tport}:127.0.0.1",
                "-w", "%{http_version} %{http_code}\\n", "-o", "/dev/null"]
        assert curl("--http2", *base, f"https://a.example.com:{tport}/x").stdout.strip() == "2 200"
        assert curl("--http1.1", *base, f"https://a.example.com:{tport}/x").stdout.strip() == "1.1 200"
        many = [f"https://a.example.com:{tport}/n{i}" for i in range(20)]
        out = curl("--http2", "--parallel", "--parallel-max", "10", *base, *many)
        assert out.stdout.split("\n").count("2 200") == 20, out.stdout + out.stderr
        assert backend.requests[-1].headers["forwarded"].endswith("; httpproto=http/2.0" + backend.requests[-1]
                                                                   .headers["forwarded"].split("http/2.0", 1)[1])
        body = os.urandom(300_000)
        (tmp_path / "body").write_bytes(body)
        out = curl("--http2", *base[:4], "--data-binary", f"@{tmp_path / 'body'}", f"https://a.example.com:{tport}/up")
        assert out.returncode == 0 and backend.requests[-1].body == body


def test_a_certificate_for_each_name_and_strictmatch(ca: trustme.CA, tmp_path: Path, backend: Backend) -> None:
    r, tport = https_router(ca, tmp_path, f"route add svc / http://127.0.0.1:{backend.port}/", extra=";strictmatch=true")
    with r:
        def served(name: str) -> subprocess.CompletedProcess:
            return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tport}", "-servername", name,
                                   "-CAfile", str(tmp_path / "ca.pem"), "-verify_return_error", "-brief"],
                                  input="", capture_output=True, text=True, timeout=20)
        ok = served("deep.example.org")
        assert ok.returncode == 0 and "Verification: OK" in ok.stderr, ok.stderr
        refused = served("unknown.test")
        assert refused.returncode != 0


def test_https_tcp_sni_splices_tcp_routes_and_serves_the_rest(ca: trustme.CA, tmp_path: Path, backend: Backend) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("db.example.net").configure_cert(ctx)
    import threading
    srv = socket.create_server(("127.0.0.1", 0))
    dbport = srv.getsockname()[1]

    def tls_echo() -> None:
        c, _ = srv.accept()
        with ctx.wrap_socket(c, server_side=True) as t:
            t.sendall(b"db says " + t.recv(100))

    threading.Thread(target=tls_echo, daemon=True).start()
    routes = (f"route add db db.example.net tcp://127.0.0.1:{dbport}\n"
              f"route add svc / http://127.0.0.1:{backend.port}/\n")
    r, tport = https_router(ca, tmp_path, routes, extra=";proto=https+tcp+sni")
    with r:
        client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with socket.create_connection(("127.0.0.1", tport), timeout=10) as s, \
                client.wrap_socket(s, server_hostname="db.example.net") as t:
            t.sendall(b"hi")
            assert t.recv(100) == b"db says hi"  # the backend's own certificate, verified end to end
        out = curl("--cacert", str(tmp_path / "ca.pem"), "--resolve", f"a.example.com:{tport}:127.0.0.1",
                   f"https://a.example.com:{tport}/web")
        assert out.stdout.strip() == "b1", out.stderr


def test_pxyproto_on_an_http_listener(backend: Backend) -> None:
    port = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add svc / http://127.0.0.1:{backend.port}/", env=OWN)
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{port};pxyproto=true"]
    with r:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 198.51.100.9 10.0.0.1 5555 80\r\nGET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        seen = backend.requests[-1].headers
        assert seen["x-real-ip"] == "198.51.100.9" and seen["x-forwarded-for"] == "198.51.100.9"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 garbage\r\nGET / HTTP/1.1\r\n\r\n")
            try:
                got = s.recv(100)
            except ConnectionResetError:  # closed with our request unread
                got = b""
            assert got == b""  # a bad header: closed, nothing served


def test_redirect_loop_guard_sees_the_tls_scheme(ca: trustme.CA, tmp_path: Path, backend: Backend) -> None:
    # the usual http -> https redirect: over plain HTTP it redirects; over TLS it would send the client to the
    # URL it asked for, so the guard skips it (fabio's rule, with the scheme the connection really has)
    routes = (f'route add redir a.example.com/ https://a.example.com$path opts "redirect=301"\n'
              f"route add svc / http://127.0.0.1:{backend.port}/\n")
    r, tport = https_router(ca, tmp_path, routes)
    with r:
        plain = curl("--connect-to", f"a.example.com:80:127.0.0.1:{r.proxy_port}", "-D", "-", "-o", "/dev/null",
                     "http://a.example.com/x")
        assert plain.stdout.startswith("HTTP/1.1 301") and "location: https://a.example.com/x" in plain.stdout.lower()
        tls = curl("--cacert", str(tmp_path / "ca.pem"), "--connect-to", f"a.example.com:443:127.0.0.1:{tport}",
                   "https://a.example.com/x")
        assert tls.stdout.strip() == "b1", tls.stdout + tls.stderr
