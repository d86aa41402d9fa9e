"""Two connections spliced into one byte stream, with flow control both ways (TCP routes, tcp+sni).

Each side is an asyncio Protocol. Bytes read on one side are written to the other at once; when the
other side's transport holds more than its high-water mark (the peer reads slowly), this side stops
reading until it drains, so a slow reader costs at most one write buffer, not the whole stream. A FIN is
passed on as a FIN (half-close) where the transport can send one; when either side is gone, both close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

_now = time.monotonic

HIGH_WATER = 256 * 1024  # bytes buffered towards a slow reader before its source stops reading


class Side(asyncio.Protocol):
    """One end; `count(n)` is called with the size of every chunk read on this end."""

    __slots__ = ("transport", "peer", "count", "pending", "closed", "eof", "last_read", "done")

    def __init__(self, count: Callable[[int], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.count = count
        self.pending: list[bytes] = []  # read before the peer was attached (its connect still running)
        self.closed = False
        self.eof = False
        self.last_read = 0.0
        self.done: asyncio.Future[None] | None = None

    # --- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.last_read = _now()
        if self.count is not None:
            self.count(len(data))
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            if sum(map(len, self.pending)) > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if peer.transport.can_write_eof() and not peer.eof:
                peer.transport.write_eof()
                return True  # keep our writing half open: the peer may still answer
            peer.transport.close()
        return False

    def pause_writing(self) -> None:  # our transport is full: stop reading on the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.close()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # --- ours

    def attach(self, peer: Side) -> None:
        """Join two sides; bytes either side read before this are written to the other now."""
        self.peer, peer.peer = peer, self
        for a, b in ((self, peer), (peer, self)):
            if a.pending and b.transport is not None:
                b.transport.writelines(a.pending)
                a.pending = []
                if a.transport is not None and not a.closed:
                    a.transport.resume_reading()
            if a.closed and b.transport is not None:
                b.transport.close()
            elif a.eof and b.transport is not None:
                if b.transport.can_write_eof():
                    b.transport.write_eof()
                else:
                    b.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def watchdog(client: Side, read_timeout: float, write_timeout: float) -> asyncio.TimerHandle | None:
    """fabio's rt=/wt= on a TCP connection (a deadline per read and per write of the client socket):
    close it when the client sent nothing for `read_timeout`, or when bytes towards the client have
    waited unsent for `write_timeout`. One timer per connection, re-armed at a quarter of the shorter."""
    if not (read_timeout > 0 or write_timeout > 0):
        return None
    loop = asyncio.get_running_loop()
    tick = min(t for t in (read_timeout, write_timeout) if t > 0) / 4
    client.last_read = _now()
    stuck_since = [0.0]
    handle: list[asyncio.TimerHandle] = []

    def check() -> None:
        if client.closed or client.transport is None:
            return
        now = _now()
        if read_timeout > 0 and now - client.last_read > read_timeout:
            client.transport.abort()
            return
        if write_timeout > 0:
            if client.transport.get_write_buffer_size() > 0:
                stuck_since[0] = stuck_since[0] or now
                if now - stuck_since[0] > write_timeout:
                    client.transport.abort()  # close() would wait for the unsent bytes
                    return
            else:
                stuck_since[0] = 0.0
        handle[0] = loop.call_later(tick, check)

    handle.append(loop.call_later(tick, check))
    return handle[0]
