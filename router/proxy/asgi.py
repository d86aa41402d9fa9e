"""The proxy core behind any ASGI server: `ProxyApp.__call__` wraps ASGI's receive/send into an
:class:`AsgiExchange` and calls the same `ProxyApp.serve` our listener (router/listen/) calls, so there
is one request journey. The router itself never serves the proxy this way; it is kept so the core can be
measured under another server (docs/datapath.md) and driven from tests without sockets.

What only the ASGI path needs lives here: ASGI servers chunk every body without a length, which an
HTTP/1.0 client cannot read, so for such a client the body is collected and sent with a Content-Length.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from router.proxy.exchange import ClientGone, Headers


def _needs_length(method: str, status: int, headers: Headers) -> bool:
    """True when a response would have a body but carries no Content-Length."""
    if method == "HEAD" or status in (204, 304) or status < 200:
        return False
    return not any(n == b"content-length" for n, _ in headers)


class AsgiExchange:
    """An Exchange (router/proxy/exchange.py) over ASGI's receive and send."""

    __slots__ = ("scope", "receive", "send", "status", "size", "_start", "_held")

    def __init__(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.status = 0
        self.size = 0
        self._start: dict | None = None
        self._held: list[bytes] | None = None  # HTTP/1.0 and no length: the body, collected

    async def body(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        receive = self.receive
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            chunk = msg.get("body", b"")
            if chunk:
                yield chunk
            if not msg.get("more_body", False):
                return

    def start(self, status: int, headers: Headers) -> None:
        self.status = status
        if self.scope.get("http_version") == "1.0" and _needs_length(self.scope["method"], status, headers):
            self._held = []
        self._start = {"type": "http.response.start", "status": status, "headers": headers}

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._held is not None:
            self._held.append(data)
            return
        if self._start is not None:
            await self.send(self._start)
            self._start = None
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        if self._held is not None:
            body = b"".join(self._held)
            assert self._start is not None
            self._start["headers"] = [*self._start["headers"], (b"content-length", str(len(body)).encode())]
            await self.send(self._start)
            await self.send({"type": "http.response.body", "body": body})
            return
        if self._start is not None:
            await self.send(self._start)
            self._start = None
        await self.send({"type": "http.response.body", "body": b""})

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        self.status = status
        self.size = len(body)
        if self.scope.get("http_version") == "1.0" and _needs_length(self.scope["method"], status, headers):
            headers = [*headers, (b"content-length", str(len(body)).encode())]  # as end() does for a held body
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
