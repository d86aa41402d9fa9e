"""Real HTTP backends for tests: aiohttp servers on free loopback ports, each in its own thread.

Each answers with its instance name and records what it received (path, headers), so tests can
assert on what the router forwarded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web


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
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

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
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"backend-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"backend {self.name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

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
