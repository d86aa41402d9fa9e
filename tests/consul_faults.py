"""A fault-injecting HTTP relay in front of a real Consul agent (issue 7, "Consul misbehaving").

Not a fake Consul: in mode "pass" every request goes to the real agent and its answer comes back
unchanged, so blocking queries, indexes and filters keep Consul's own semantics. On command the relay
misbehaves in the ways a real agent (or a proxy in front of it) does:

    relay = ConsulRelay(agent.http_url).start()   # relay.addr -> point the router here
    relay.mode = "hang"                            # accept and read requests, never answer
    relay.mode = "error"; relay.error_status = 429 # answer every request with that status
    relay.index_override = 0                       # rewrite X-Consul-Index on every answer
    relay.rate(since, until)                       # requests/s the relay received in that window

It runs its own event loop in a thread (tests/aiohttp_thread.py), so tests stay synchronous.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from tests.aiohttp_thread import ThreadedApp
from tests.router_proc import free_port

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class ConsulRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.mode = "pass"  # "pass" | "hang" | "error"
        self.error_status = 500
        self.index_override: int | None = None
        self.stamps: list[float] = []  # monotonic arrival time of every request
        self.paths: list[tuple[float, str]] = []  # (arrival, path) of every request
        self.hung = 0  # requests currently held without an answer
        self._session: aiohttp.ClientSession | None = None
        self._app: ThreadedApp | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rate(self, since: float, until: float) -> float:
        """Requests per second received between two monotonic times."""
        n = sum(1 for t in list(self.stamps) if since <= t < until)
        return n / max(until - since, 1e-9)

    def count(self, since: float, until: float) -> int:
        return sum(1 for t in list(self.stamps) if since <= t < until)

    def by_path(self, since: float, until: float) -> dict[str, int]:
        """Requests per path in a window: which loop made them."""
        out: dict[str, int] = {}
        for t, p in list(self.paths):
            if since <= t < until:
                out[p] = out.get(p, 0) + 1
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        self.stamps.append(now)
        self.paths.append((now, request.path))
        body = await request.read()
        if self.mode == "hang":
            self.hung += 1
            try:
                await asyncio.Event().wait()  # until the client gives up and the handler is cancelled
            finally:
                self.hung -= 1
        if self.mode == "error":
            return web.Response(status=self.error_status, text=f"injected {self.error_status}\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP and k.lower() != "host"}
        assert self._session is not None
        async with self._session.request(request.method, self.upstream + request.raw_path, headers=headers,
                                         data=body or None) as r:
            payload = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        if self.index_override is not None and "X-Consul-Index" in out:
            out["X-Consul-Index"] = str(self.index_override)
        return web.Response(status=r.status, body=payload, headers=out)

    def start(self) -> ConsulRelay:
        async def open_session() -> None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

        async def close_session() -> None:
            if self._session is not None:
                await self._session.close()

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._app = ThreadedApp(app, port=self.port, name="consul-relay", on_start=open_session,
                                on_stop=close_session, handler_cancellation=True).start()
        return self

    def stop(self) -> None:
        if self._app is not None:
            self._app.stop()
            self._app = None
