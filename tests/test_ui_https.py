"""HTTPS on the admin UI (`ui.addr` with `cs=<source>`, as fabio serves its UI over TLS): the real router,
certificates from a `path` source made by trustme, driven with curl, openssl s_client and Python's ssl.
A replaced certificate reaches new handshakes while an open keep-alive connection keeps working."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.router_proc import RouterProc


def write_pair(d: Path, ca: trustme.CA, *names: str) -> trustme.LeafCert:
    leaf = ca.issue_cert(*names)
    (d / "ui-cert.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (d / "ui-key.pem").write_bytes(leaf.private_key_pem.bytes())
    return leaf


def served_cert(port: int, cafile: str) -> bytes:
    """The DER certificate a new handshake with the UI gets."""
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    conn.connect()
    try:
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert der is not None
        return der
    finally:
        conn.close()


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("openssl") is None, reason="curl and openssl")
def test_ui_over_https_with_a_cert_source_that_is_watched(tmp_path: Path) -> None:
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    first = write_pair(certs, ca, "127.0.0.1", "router.example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cafile = str(tmp_path / "ca.pem")
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "", ui_ca=cafile)
    r.flags += ["-ui.addr", f"127.0.0.1:{r.ui_port};cs=ui;tlsmin=tls12",
                "-proxy.cs", f"cs=ui;type=path;cert={certs}"]
    with r:
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", cafile, "--resolve",
                              f"router.example:{r.ui_port}:127.0.0.1", "-w", "%{http_code}",
                              f"https://router.example:{r.ui_port}/api/status"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0 and out.stdout.endswith("200"), out.stderr
        plain = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{r.ui_port}/health"],
                               capture_output=True, text=True, timeout=20)
        assert plain.returncode != 0 or "200" not in plain.stdout  # no plain HTTP on a TLS port
        s_client = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{r.ui_port}", "-servername",
                                   "router.example", "-CAfile", cafile, "-verify_return_error", "-brief", "-tls1_1"],
                                  input="", capture_output=True, text=True, timeout=20)
        assert s_client.returncode != 0  # tlsmin=tls12 holds on the UI too
        before = served_cert(r.ui_port, cafile)
        assert before == ssl.PEM_cert_to_DER_cert(first.cert_chain_pems[0].bytes().decode())

        # an open keep-alive connection, then the certificate is replaced
        ctx = ssl.create_default_context(cafile=cafile)
        kept = http.client.HTTPSConnection("127.0.0.1", r.ui_port, context=ctx, timeout=5)
        kept.request("GET", "/health")
        first_resp = kept.getresponse()
        assert first_resp.status == 200 and first_resp.read()
        kept.sock.settimeout(5)  # type: ignore[union-attr]
        write_pair(certs, ca, "127.0.0.1", "router.example")
        deadline = time.monotonic() + 5
        while served_cert(r.ui_port, cafile) == before:
            assert time.monotonic() < deadline, "the replaced certificate was not served within 5 s"
            time.sleep(0.1)
        kept.request("GET", "/health")
        resp = kept.getresponse()
        assert resp.status == 200 and resp.read()
        kept.close()


def test_ui_cert_source_that_cannot_be_loaded_stops_startup(tmp_path: Path) -> None:
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "")
    r.flags += ["-ui.addr", f"127.0.0.1:{r.ui_port};cs=ui",
                "-proxy.cs", f"cs=ui;type=file;cert={tmp_path / 'missing.pem'}"]
    with pytest.raises(RuntimeError) as e:
        r.start()
    r.stop()
    assert "ui.addr" in str(e.value) and "missing.pem" in str(e.value)


@pytest.mark.parametrize(("ui_addr", "scheme"), [(":9998", "http"), (":9998;cs=ui", "https")])
def test_self_registration_checks_the_ui_over_its_scheme(ui_addr: str, scheme: str) -> None:
    """fabio's rule: a UI with a cert source makes the registration's health check https."""
    from router.config.settings import load
    from router.run.router import Router

    cfg = load(["-registry.consul.addr", "127.0.0.1:1", "-registry.consul.register.enabled", "true",
                "-ui.addr", ui_addr, "-proxy.cs", "cs=ui;type=file;cert=/nonexistent.pem"], env={})
    router = Router(cfg)  # never started: no request is made, no certificate read
    assert router.registrar is not None
    [check] = [c["HTTP"] for c in router.registrar.main.body()["Checks"] if "HTTP" in c]
    assert check.startswith(f"{scheme}://") and check.endswith(":9998/health"), check


def test_ui_it_option_closes_idle_keep_alive_connections() -> None:
    """fabio's admin server takes the ui.addr listener's idle timeout (`it=`) too."""
    import socket

    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "")
    r.flags += ["-ui.addr", f"127.0.0.1:{r.ui_port};it=1s"]
    with r:
        s = socket.create_connection(("127.0.0.1", r.ui_port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < int(
                got.lower().partition(b"content-length:")[2].split(b"\r\n")[0] or b"0"):
            chunk = s.recv(65536)  # the whole answer: head and body may come in two reads
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got
        s.settimeout(3.5)  # a guard below uvicorn's own default (5 s), so only it=1s can close it in time
        try:
            rest = s.recv(65536)
        except TimeoutError:
            rest = None
        s.close()
        assert rest == b"", "the UI kept the idle connection past it=1s"
