"""One request on an HTTP/1.1 connection, as the proxy core sees it: the Exchange (router/proxy/exchange.py)
of router/listen/http1.py. Its request body (queued chunks, Expect: 100-continue on the first read) and
its answer's framing: the head held until the first body bytes or the end so a small answer is one write,
chunked framing when the answer has no length (none for an HTTP/1.0 client, whose body the close ends;
none where an answer has no body), and `write()` waiting while the client's write buffer is full
(`write_now()` the same without the wait, for the upstream's read callbacks: router/proxy/exchange.py Sink)."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import TYPE_CHECKING

from router.listen.slowread import CHECK_AFTER, cap_if_slow
from router.proxy.exchange import ClientGone, Headers

if TYPE_CHECKING:
    from router.listen.http1 import Http1

# write() waits while any of the answer is left in the client's write buffer, until the kernel took it all
# (Go's blocking write, fabio's), and write_now() reports it so the upstream socket pauses: a client that
# reads slowly holds one read of its answer here (<= 64 KiB, 16 KiB once it fell behind; router/proxy/
# upstream_response.py relay, HIGH_WATER); the kernel's socket buffers hold the rest (docs/datapath.md,
# "Slow clients").
WRITE_HIGH = 0
WRITE_LOW = 0
BODY_HIGH = 1 << 20  # buffered request-body bytes per connection at which reading pauses
COALESCE = 64 * 1024  # below this, head and body (and chunk framing) are joined into one write


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


STATUS_LINE = {code: _status_line(code) for code in range(100, 1000)}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Http1Exchange:
    """One request on an HTTP/1.1 connection: its body for the core, and the answer's framing."""

    __slots__ = ("conn", "scope", "keep_alive", "head_only", "expect", "chunks", "buffered", "body_done", "gone",
                 "broken", "waiter", "status", "size", "head", "chunked", "bodiless", "finished", "sent", "reject")

    def __init__(self, conn: Http1, scope: dict, keep_alive: bool, head_only: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.head_only = head_only  # a HEAD request
        self.expect = False  # Expect: 100-continue not answered yet
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.body_done = True  # set False by the connection when a body follows
        self.gone = False  # the client left (or its framing broke) before its body ended
        self.broken = False  # a parse error inside this request: never forwarded
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.size = 0
        self.head: bytes | None = None  # the answer's head, until it is written with the first bytes
        self.chunked = False
        self.bodiless = False
        self.finished = False
        self.sent = False  # any byte of the answer written
        self.reject = 0  # a status the listener answers itself (431) instead of the core

    # --- the request body, for the core
    def body(self) -> Http1Exchange:
        return self

    def __aiter__(self) -> Http1Exchange:
        return self

    async def __anext__(self) -> bytes:
        conn = self.conn
        if self.expect:
            self.expect = False
            if not self.sent and not conn.lost:
                conn.transport.write(CONTINUE)
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                if conn.reading_paused:
                    conn.maybe_resume()
                return data
            if self.gone:
                raise ClientGone()
            if self.body_done:
                raise StopAsyncIteration
            self.waiter = conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def deliver(self, data: bytes) -> None:
        if self.finished or self.gone:
            return  # answered already: the rest of the body is read and dropped
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > BODY_HIGH:
            self.conn.pause()
        self.wake()

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- the answer
    def start(self, status: int, headers: Headers) -> None:
        self.status = status
        # The names are lower-case (the Exchange's rule) and no value holds a CRLF, so a name is found in
        # the joined lines exactly: no Python loop over the headers for every answer.
        lines = b"\r\n".join(map(b": ".join, headers)) + b"\r\n" if headers else b""
        close = False
        # find() rather than `in`: bytes.__contains__ first tries the needle as an int, raising and
        # clearing a TypeError (~1,800 instructions) each time (bench/tls_cost.py under callgrind).
        if lines.find(b"connection: ") >= 0:  # rare: look closer (it may be inside another header's value)
            close = any(n == b"connection" and b"close" in v.lower() for n, v in headers)
            if close:
                self.keep_alive = False
        end = b"\r\n"  # what follows the lines: the framing the answer needs, and the blank line
        if self.head_only or status in (204, 304) or status < 200:
            self.bodiless = True
        elif not (lines.startswith(b"content-length: ") or lines.find(b"\ncontent-length: ") >= 0):
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                end = b"transfer-encoding: chunked\r\n\r\n"
            else:  # an HTTP/1.0 client cannot read chunked framing: the close ends the body
                self.keep_alive = False
        if not self.keep_alive and not close:
            end = end[:-2] + b"connection: close\r\n\r\n"
        self.head = (STATUS_LINE.get(status) or _status_line(status)) + lines + end

    def _emit(self, data: bytes, last: bool) -> None:
        conn = self.conn
        if conn.lost:
            raise ClientGone()
        head = self.head
        if head is not None and data and not self.chunked and not self.bodiless:  # a head and a sized body:
            self.head = None  # most answers, and every small one (respond), leave in one write
            self.size += len(data)
            self.sent = True
            if len(data) < COALESCE:
                conn.transport.write(head + data)
            else:
                conn.transport.writelines([head, data])
            return
        parts = []
        if head is not None:
            parts.append(head)
            self.head = None
        if data and not self.bodiless:
            self.size += len(data)
            if self.chunked:
                parts += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                parts.append(data)
        if last and self.chunked:
            parts.append(b"0\r\n\r\n")
        if not parts:
            return
        self.sent = True
        t = conn.transport
        if len(parts) == 1:
            t.write(parts[0])
        elif len(data) < COALESCE:
            t.write(b"".join(parts))
        else:
            t.writelines(parts)

    async def write(self, data: bytes) -> None:
        self._emit(data, False)
        conn = self.conn
        if not conn.window_checked and (self.size >= CHECK_AFTER or conn.write_paused):
            conn.window_checked = True  # once per connection: a slow reader's tiny window (router/listen/slowread.py)
            cap_if_slow(conn.transport.get_extra_info("socket"))
        if conn.write_paused:
            await conn.drain()

    def write_now(self, data: bytes) -> bool:
        """The Sink side of `write()` (router/proxy/exchange.py): the same framing and the same bound, called
        from the upstream connection's read callback; True while the client took everything so far, False
        when it did not or has just been found to read slowly (the caller then reads less at a time)."""
        self._emit(data, False)
        conn = self.conn
        if not conn.window_checked and (self.size >= CHECK_AFTER or conn.write_paused):
            conn.window_checked = True  # once per connection: a slow reader's tiny window (router/listen/slowread.py)
            if cap_if_slow(conn.transport.get_extra_info("socket")):
                return False  # a slow reader: the kernel will refuse the next read, so make it a small one
        return not conn.write_paused

    async def writable(self) -> None:
        conn = self.conn
        if conn.write_paused:
            await conn.drain()
        if conn.lost:
            raise ClientGone()

    async def end(self) -> None:
        if self.finished:
            return
        self._emit(b"", True)
        self.conn.finish(self)

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        self.start(status, headers)
        self._emit(body, True)
        self.conn.finish(self)
