"""WebSocket upgrades through the real router: 101, strip=, X-Forwarded-For, both directions, closes."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc, free_port

backend = module_backend("wsb")


@pytest.fixture(scope="module")
def router(backend: Backend) -> Iterator[RouterProc]:
    routes = "\n".join([
        f'route add ws /chat http://127.0.0.1:{backend.port}/ opts "strip=/chat"',
        f"route add ws /plain http://127.0.0.1:{backend.port}/",
        f"route add ws /dead http://127.0.0.1:{free_port()}/",
        f'route add ws /private http://127.0.0.1:{backend.port}/ opts "deny=ip:127.0.0.0/8"',
    ])
    with RouterProc.static(routes) as r:
        yield r


def upgrade(port: int, path: str) -> bytes:
    """Send a WebSocket upgrade for `path` and return the response head."""
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n".encode()
                  + b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return head


def test_upgrade_cannot_bypass_access_rules(router: RouterProc, backend: Backend) -> None:
    seen = len(backend.requests)
    head = upgrade(router.proxy_port, "/private/ws")
    assert head.startswith(b"HTTP/1.1 403"), head
    assert len(backend.requests) == seen  # never forwarded
    assert upgrade(router.proxy_port, "/plain/ws").startswith(b"HTTP/1.1 101")


def test_handshake_is_101_and_rewritten(router: RouterProc, backend: Backend) -> None:
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", router.proxy_port), timeout=5) as s:
        s.sendall(b"GET /chat/ws?room=1 HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
                  b"X-Forwarded-For: 10.0.0.1\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-accept" in head.lower()
    seen = backend.requests[-1]
    assert seen.path == "/ws?room=1"  # strip= applied, query kept
    assert seen.headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen.headers["x-forwarded-prefix"] == "/chat"
    assert seen.headers["host"] == "example.test"


async def _conversation(url: str) -> tuple[list, int | None]:
    got: list = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url, autoping=False) as ws:
        await ws.send_str("hello")
        got.append((await ws.receive(timeout=5)).data)
        await ws.send_bytes(b"\x00\x01binary\xff")
        got.append((await ws.receive(timeout=5)).data)
        big = "x" * 300_000  # bigger than any single socket read
        await ws.send_str(big)
        got.append((await ws.receive(timeout=5)).data == f"wsb:{big}")
        await ws.ping(b"p")
        msg = await ws.receive(timeout=5)
        got.append((msg.type, msg.data))
        await ws.send_str("close")  # the backend closes with 4000
        msg = await ws.receive(timeout=5)
        got.append(msg.type)
        return got, ws.close_code


def test_messages_both_ways_and_server_close(router: RouterProc) -> None:
    got, code = asyncio.run(_conversation(router.url.replace("http", "ws") + "/chat/ws"))
    assert got[:3] == ["wsb:hello", b"\x00\x01binary\xff", True]
    assert got[3] == (aiohttp.WSMsgType.PONG, b"p")
    assert got[4] == aiohttp.WSMsgType.CLOSE
    assert code == 4000
    deadline = time.monotonic() + 5
    while "websocket" not in router.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [ln for ln in router.output().splitlines() if "router.websocket" in ln and "/chat/ws" in ln]
    assert lines and "status=101" in lines[-1]


def test_client_close_reaches_backend(router: RouterProc, backend: Backend) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(router.url + "/plain/ws") as ws:
            await ws.send_str("a")
            assert (await ws.receive(timeout=5)).data == "wsb:a"
            await ws.close(code=1000)

    before = len(backend.ws_closed)
    asyncio.run(run())
    deadline = time.monotonic() + 5
    while 1000 not in backend.ws_closed[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 1000 in backend.ws_closed[before:]  # other tests' sockets may finish closing meanwhile


def test_no_route_and_dead_upstream(router: RouterProc) -> None:
    async def status(path: str) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(router.url + path):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(status("/nowhere/ws")) == 404
    assert asyncio.run(status("/dead/ws")) == 502


def test_handshake_keeps_the_clients_percent_encoding_through_strip(router: RouterProc, backend: Backend) -> None:
    """`%2F` and `%25` reach the upstream as the client wrote them, as for plain requests."""
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", router.proxy_port), timeout=5) as s:
        s.sendall(b"GET /chat/a%2Fb%25c/ws HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert backend.requests[-1].path == "/a%2Fb%25c/ws"
