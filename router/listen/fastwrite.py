"""uvicorn's httptools protocol with writes coalesced per event-loop pass.

Why: uvicorn writes a response's head on `http.response.start` and its body on the next
`http.response.body`, so a small proxied response costs two send() syscalls (profiled in
docs/datapath.md: the second one was ~10% of a worker's CPU). Writes smaller than 64 KiB are held
until the end of the current loop pass and sent as one; big writes go straight through (after
anything held), so streaming and the transport's flow control are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DIRECT = 1 << 16  # writes at least this large are not held back


class _CoalescingTransport:
    """Wraps the real transport; only write/close/buffer size differ, the rest is delegated."""

    __slots__ = ("_t", "_loop", "_held", "_scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if len(data) >= DIRECT:
            if self._held:
                self.flush()
            self._t.write(data)
            return
        self._held.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        held = self._held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            if not self._t.is_closing():
                self._t.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        self.flush()
        self._t.write_eof()

    def close(self) -> None:
        self.flush()
        self._t.close()

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + sum(len(b) for b in self._held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Pass as uvicorn.Config(http=...) for the proxy server."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
