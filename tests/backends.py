"""Real HTTP backends for tests: aiohttp servers on free loopback ports, each in its own thread
(tests/aiohttp_thread.py).

Each answers with its instance name and records what it received (path, headers), so tests can
assert on what the router forwarded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.aiohttp_thread import ThreadedApp


@dataclass
class Seen:
    method: str
    path: str  # raw path with query
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Backend:
    name: str
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    ws_closed: list[int | None] = field(default_factory=list)  # close code of each finished websocket
    _app: ThreadedApp | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/ws") and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        self.requests.append(Seen(request.method, request.raw_path, {k.lower(): v for k, v in request.headers.items()}, body))
        if request.path.endswith("/slow"):
            await asyncio.sleep(float(request.query.get("s", "2")))
        if request.path.endswith("/status"):  # e.g. 204, 304: answers without a body
            return web.Response(status=int(request.query["code"]), headers={"X-Backend": self.name})
        if request.path.endswith("/big"):
            return web.Response(body=b"x" * int(request.query["n"]))
        if request.path.endswith("/stream"):
            sse = "sse" in request.query
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"} if sse else None)
            await resp.prepare(request)
            for i in range(int(request.query.get("n", "3"))):
                await resp.write(f"data: {i}\n\n".encode() if sse else f"chunk {i}\n".encode())
                await asyncio.sleep(float(request.query.get("gap", "0.05")))
            await resp.write_eof()
            return resp
        if request.path.endswith("/echo"):
            return web.Response(body=body, headers={"X-Backend": self.name})
        return web.Response(text=f"{self.name}\n", headers={"X-Backend": self.name})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        """Echo: text comes back prefixed with the instance name, binary as is; "close" closes with 4000."""
        self.requests.append(Seen(request.method, request.raw_path, {k.lower(): v for k, v in request.headers.items()}, b""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close(code=4000, message=b"bye")
                    break
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == web.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.ws_closed.append(ws.close_code)
        return ws

    def start(self) -> Backend:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._app = ThreadedApp(app, port=self.port, name=f"backend-{self.name}").start()
        self.port = self._app.port
        return self

    def stop(self) -> None:
        if self._app is not None:
            self._app.stop()
            self._app = None

    @property
    def hits(self) -> int:
        return len(self.requests)


def module_backend(name: str) -> Callable[[], Iterator[Backend]]:
    """A module-scoped `backend` fixture: `backend = module_backend("b1")` in a test module."""

    @pytest.fixture(scope="module")
    def backend() -> Iterator[Backend]:
        b = Backend(name).start()
        yield b
        b.stop()

    return backend
