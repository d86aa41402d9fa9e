"""`registry.consul.addr=https://...` with `registry.consul.tls.*`, against a local HTTPS stand-in for Consul."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from registry.consul.api import ConsulAPI, ConsulError, ConsulTLS


class _Agent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = json.dumps({"Config": {"Datacenter": "tls-dc"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def https_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    d = tmp_path_factory.mktemp("ctls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert
    server.shutdown()


def _self(addr: str, tls: ConsulTLS | None) -> dict:
    async def go() -> dict:
        api = ConsulAPI(addr, tls=tls)
        try:
            return await api.agent_self()
        finally:
            await api.close()

    return asyncio.run(go())


def test_https_consul_with_ca_file(https_agent: tuple[int, Path]) -> None:
    port, cert = https_agent
    assert _self(f"https://127.0.0.1:{port}", ConsulTLS(cafile=str(cert)))["Config"]["Datacenter"] == "tls-dc"


def test_https_consul_insecure_skip_verify(https_agent: tuple[int, Path]) -> None:
    port, _ = https_agent
    assert _self(f"https://127.0.0.1:{port}/ignored", ConsulTLS(insecureskipverify=True))["Config"]


def test_https_consul_unverified_is_refused(https_agent: tuple[int, Path]) -> None:
    port, _ = https_agent
    with pytest.raises(ConsulError):
        _self(f"https://127.0.0.1:{port}", None)  # self-signed, system CAs: must fail
