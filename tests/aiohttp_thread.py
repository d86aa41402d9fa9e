"""An aiohttp app served from its own event loop in a background thread, so that synchronous tests can
talk to a real HTTP server (the fabio rows' backends, the fault-injecting Consul relay) without an event
loop of their own. One copy of the start/stop plumbing for every such server in the tests."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

Hook = Callable[[], Awaitable[None]]


class ThreadedApp:
    """Serves `app` on 127.0.0.1:`port` (0: a free port, read back into `port` once started). `on_start`
    and `on_stop` run on the server's loop, before it listens and after it stopped: for client sessions
    and other loop-bound state the handlers use."""

    def __init__(self, app: web.Application, *, port: int = 0, tls: ssl.SSLContext | None = None,
                 name: str = "test-server", on_start: Hook | None = None, on_stop: Hook | None = None,
                 handler_cancellation: bool = False) -> None:
        self.app, self.port, self.tls, self.name = app, port, tls, name
        self._on_start, self._on_stop = on_start, on_stop
        self._cancel = handler_cancellation
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ThreadedApp:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(self.app, access_log=None, handler_cancellation=self._cancel)

            async def setup() -> None:
                if self._on_start is not None:
                    await self._on_start()
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.tls)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

            loop.run_until_complete(setup())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            if self._on_stop is not None:
                loop.run_until_complete(self._on_stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
