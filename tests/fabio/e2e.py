"""End-to-end helpers for the proxy rows of fabio's tables: a real router process on static routes
(tests/router_proc.py) in front of real HTTP servers whose answers a row chooses."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiohttp import web

from tests.aiohttp_thread import ThreadedApp

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    """An aiohttp server on a free loopback port, in its own thread, answering with `handler`; it records
    each request's headers (names lower-cased) and raw path."""

    handler: Handler
    tls: ssl.SSLContext | None = None
    port: int = 0
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _app: ThreadedApp | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.raw_path, {k.lower(): v for k, v in request.headers.items()}))
        return await self.handler(request)

    def start(self) -> Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._app = ThreadedApp(app, tls=self.tls, name="fabio-row-server").start()
        self.port = self._app.port
        return self

    def stop(self) -> None:
        if self._app is not None:
            self._app.stop()
            self._app = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def text(body: str | bytes, **headers: str) -> Handler:
    """A handler answering 200 with `body` and the given headers (`Content_Type` -> Content-Type)."""
    data = body.encode() if isinstance(body, str) else body
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data, headers=hdrs)

    return handle


async def echo_host(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.headers.get("Host", ""))


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes  # as sent: not decompressed


def get(url: str, **headers: str) -> Answer:
    """One GET with exactly the given headers (no default Accept-Encoding), redirects not followed."""
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        req = c.build_request("GET", url, headers=headers)
        if "Accept-Encoding" not in headers:
            del req.headers["Accept-Encoding"]
        resp = c.send(req, stream=True)
        try:
            return Answer(resp.status_code, resp.headers, b"".join(resp.iter_raw()))
        finally:
            resp.close()


def raw_get(port: int, target: str, **headers: str) -> tuple[Answer, int]:
    """A GET written byte for byte on a socket whose local port is known (the access log's remote_port),
    with `Connection: close`; returns the answer and the client's port."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        lines = [f"GET {target} HTTP/1.1", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
                 "Connection: close", "", ""]
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        local = s.getsockname()[1]
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
    hdrs = httpx.Headers([tuple(x.split(": ", 1)) for x in hdr_lines])  # type: ignore[misc]
    return Answer(int(status_line.split()[1]), hdrs, body), local


def self_signed(directory: Path, name: str = "cert") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made now with the openssl CLI (never checked in); it is its own CA, so a
    client that trusts this file verifies the server."""
    import subprocess

    key, cert = directory / f"{name}-key.pem", directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx
