"""Shared parts of the traffic-policy end-to-end tests: a backend with the answers the policies need, and a
client that decodes nothing (the body as the router sent it)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import threading
from collections.abc import Callable, Iterator

import brotli
import pytest
import zstandard
from aiohttp import web

from tests.backends import Backend, Seen

JSON_BODY = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(400)]).encode()


class PolicyBackend(Backend):
    """The test backend plus answers the policies need: typed bodies, encoded ones, gated SSE."""

    gate: threading.Event

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        p = request.path
        if p.endswith("/json"):
            n = int(request.query.get("n", len(JSON_BODY)))
            extra = {k[2:]: v for k, v in request.query.items() if k.startswith("h-")}
            return web.Response(body=(JSON_BODY * (n // len(JSON_BODY) + 1))[:n],
                                headers={"Content-Type": "application/json", "ETag": '"v1"', "Accept-Ranges": "bytes",
                                         **extra})
        if p.endswith("/png"):
            return web.Response(body=b"\x89PNG" + b"\0" * 5000, headers={"Content-Type": "image/png"})
        if p.endswith("/pregz"):
            return web.Response(body=gzip.compress(JSON_BODY),
                                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        if p.endswith("/powered"):
            joined = {k.lower(): ", ".join(request.headers.getall(k)) for k in request.headers}
            self.requests.append(Seen(request.method, request.raw_path, joined, b""))
            return web.Response(text="ok\n", headers={"Server": "Apache/2.4.1", "X-Powered-By": "PHP/5.6",
                                                      "X-Keep": "1"})
        if p.endswith("/gated-sse"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: first\n\n")
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            await resp.write(b"data: second\n\n")
            await resp.write_eof()
            return resp
        return await super()._handle(request)


def policy_backend(name: str) -> Callable[[], Iterator[PolicyBackend]]:
    """A module-scoped fixture of a PolicyBackend answering with `name`."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[PolicyBackend]:
        b = PolicyBackend(name)
        b.gate = threading.Event()
        b.start()
        yield b
        b.stop()

    return fixture


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET with http.client, which decodes nothing: the body as the router sent it."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def decode(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        return gzip.decompress(data)
    if enc == "br":
        return brotli.decompress(data)
    if enc == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data

