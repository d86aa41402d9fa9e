"""One upstream response as the proxy consumes it: the head is complete, the body arrives in chunks.

Kept apart from the connection that fills it (router/proxy/upstream_conn.py): this is the consumer's
side, the waits on the head (`headers`, `arrived`, `fill`), the body iteration with its flow control
(HIGH_WATER, the slow-read bound) and the hand-back of the connection (`release`, `close`).
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from router.proxy.upstream_errors import UpstreamTimeout

if TYPE_CHECKING:
    from router.proxy.exchange import Sink
    from router.proxy.upstream_conn import UpstreamConn

# The slow-read bound (issue 15, docs/datapath.md "Slow clients"). The upstream socket is read while the
# consumer (the client's side) waits for bytes; a read that arrives while it is busy writing to its client
# is a read-ahead of at most READ_AHEAD bytes (router/proxy/upstream_conn.py), after which reading pauses
# until the consumer finds nothing left (a pull, as Go's io.Copy with its one buffer). The client's side
# waits until its write buffer is empty (router/listen/http1_exchange.py), so a client that reads slowly
# holds one read there and one read-ahead here; the rest of the answer waits in the kernel's socket buffers
# and at the upstream. HIGH_WATER: buffered bytes nobody waits for that a response may hold before reading
# pauses: none, except while the first `proxy.retry.buffer` bytes are held back (Response.fill).
HIGH_WATER = 0
# A fast reader does not go through the pull at all: `relay()` hands the body to the client's side from the
# connection's read callbacks (UpstreamConn._deliver -> Sink.write_now), a read at a time, for as long as the
# client's write buffer stays empty, and pauses the socket when it is not. That keeps the bound (one read in
# the client's write buffer, nothing here) without a task wake-up, a future and a pause/resume of the socket
# per read, which cost a third of a 200 MB download's CPU (docs/datapath.md, "Downloads").


class _Interrupted(Exception):
    """Response.arrived(): the wait ended, the response did not."""


class Response:
    """One upstream response: headers are complete; the body arrives through `iter_any()`."""

    __slots__ = ("status", "raw_headers", "forward", "_conn", "_chunks", "_buffered", "_done", "_error", "_waiter",
                 "_head", "_received", "_headers_fut", "_close_delimited", "_released", "_writer", "owner",
                 "_ahead", "_sink", "_sink_stop")

    def __init__(self, conn: UpstreamConn, head: bool) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        # once the head is complete: raw_headers as the proxy forwards them (lower-case names, no hop-by-hop
        # ones; ForwardingHeaders.response_headers' rule), or None when its Connection header names others
        self.forward: list[tuple[bytes, bytes]] | None = None
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._ahead = HIGH_WATER  # buffered bytes nobody waits for beyond which reading pauses (HIGH_WATER)
        self._done = False  # the whole body arrived
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head = head
        self._received = False  # any byte of this response arrived
        self._headers_fut: asyncio.Future[None] = conn.loop.create_future()
        self._close_delimited = False
        self._released = False
        self._writer: asyncio.Task[None] | None = None  # still uploading the request body
        self.owner: Any = None  # an instance state whose `outstanding` (and `waiting`) counts this response
        self._sink: Sink | None = None  # while relay() waits: where the connection's reads go straight to
        self._sink_stop: Exception | bool = False  # why the sink stopped taking: True (its buffer is full) or its error

    async def headers(self, timeout: float = 0.0) -> None:
        """Wait for the response headers (at most `timeout` seconds, 0 = no limit); on any failure the
        response is closed and UpstreamTimeout, Stale, UpstreamError (or the upload's error) is raised."""
        try:
            if timeout > 0:
                await asyncio.wait_for(self._headers_fut, timeout)
            else:
                await self._headers_fut
        except TimeoutError as e:
            self.close()
            raise UpstreamTimeout(f"no response headers within {timeout}s") from e
        except BaseException:
            self.close()
            raise

    async def arrived(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the headers; False if they have not come yet (the response
        stays pending, `headers_future` is then a new future for the same headers). Failures raise as in
        headers(). Costs one timer, not asyncio.wait's future, set and callbacks: it runs for every GET."""
        fut = self._headers_fut
        if not fut.done():
            timer = self._conn.loop.call_later(timeout, self._interrupt)
            try:
                await fut
            except _Interrupted:
                return False
            except BaseException:
                self.close()
                raise
            finally:
                timer.cancel()
        elif fut.exception() is not None:
            self.close()
            raise fut.exception()  # type: ignore[misc]
        return True

    def _interrupt(self) -> None:
        old = self._headers_fut
        if not old.done():
            self._headers_fut = self._conn.loop.create_future()  # the connection resolves this one now
            old.set_exception(_Interrupted())

    @property
    def headers_future(self) -> asyncio.Future[None]:
        return self._headers_fut

    @property
    def complete(self) -> bool:
        """The whole body is here (buffered or consumed) and the connection did not break."""
        return self._done and self._error is None

    @property
    def sized_and_silent(self) -> bool:
        """Headers came with a Content-Length > 0 and not one byte of that body has followed. Asked only when
        a fill ran out of time (not per request): a sized body that does not start is a stalled instance,
        where a chunked or close-delimited one (server-sent events, long polls) may rightly wait."""
        if self._done or self._buffered or self._chunks or self._error is not None:
            return False
        for n, v in self.raw_headers:
            if n.lower() == b"content-length":
                return v.strip().isdigit() and int(v) > 0
        return False

    async def fill(self, limit: int, timeout: float) -> None:
        """Hold back the body until it is complete, `limit` bytes are buffered or `timeout` passed, so a
        connection that breaks early can still be retried elsewhere; raises its error if it broke."""
        loop = self._conn.loop
        deadline = loop.time() + timeout
        self._ahead = limit  # read ahead of the consumer up to the limit, then pull again (see HIGH_WATER)
        self._conn.want_read()
        try:
            await self._fill(loop, limit, deadline)
        finally:
            self._ahead = HIGH_WATER

    async def _fill(self, loop: asyncio.AbstractEventLoop, limit: int, deadline: float) -> None:
        while not self._done and self._error is None and self._buffered < limit:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._waiter = loop.create_future()
            timer = loop.call_later(left, self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._error is not None:
            raise self._error

    def whole(self) -> bytes | None:
        """The whole body when it has all arrived in at most one chunk (taken from the response), else None:
        a small answer then leaves in one call, not through the streaming loop."""
        chunks = self._chunks
        if not self._done or self._error is not None or len(chunks) > 1:
            return None
        if not chunks:
            return b""
        self._buffered = 0
        if self._conn.paused_reading:
            self._conn.want_read()
        return chunks.popleft()

    # aiohttp-compatible surface: `resp.content.iter_any()`
    @property
    def content(self) -> Response:
        return self

    def iter_any(self) -> Response:
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                return chunk
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            self._conn.want_read()  # nothing left: read the next bytes (see HIGH_WATER)
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def relay(self, out: Sink) -> None:
        """Write the rest of the body to `out` (see HIGH_WATER): what is buffered first, then each read as it
        lands, from the connection's callbacks, while `out` keeps up; when it does not, the socket pauses and
        this waits until `out` drained. Raises the upstream's error, or `out`'s (ClientGone)."""
        conn = self._conn
        chunks = self._chunks
        while True:
            if chunks:  # no local name for the chunk: this frame would hold it through the waits below
                self._buffered -= len(chunks[0])
                if not out.write_now(chunks.popleft()):
                    conn.behind()
                    await out.writable()
                continue
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._sink = out
            conn.want_read()
            self._waiter = conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._sink = None
            stop = self._sink_stop
            if stop is not False:
                self._sink_stop = False
                if stop is not True:
                    raise stop
                await out.writable()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self._headers_fut.done():
            self._headers_fut.set_exception(exc)
        elif not self._done and self._error is None:
            self._error = exc
        self._wake()

    def give_up(self, exc: BaseException) -> None:
        """End the wait for the headers with `exc` (the proxy found the instance stalled); nothing once
        they came."""
        if not self._headers_fut.done():
            self._fail(exc)

    def release(self) -> None:
        """Give the connection back to the pool if the body was read to its end; else close it."""
        if self._released:
            return
        self._released = True
        self._leave_owner()
        w = self._writer
        uploaded = w is None or (w.done() and not w.cancelled())
        if w is not None and not w.done():
            w.cancel()  # answered before the upload ended: that request is half-written, drop it
        self._conn.finished(self, reusable=uploaded and self._done and self._error is None and not self._chunks)

    def _leave_owner(self) -> None:
        """This request no longer counts as in flight (or waiting for headers) on its instance."""
        o = self.owner
        if o is not None:
            self.owner = None
            o.outstanding -= 1
            o.waiting.pop(self, None)

    def close(self) -> None:
        if not self._headers_fut.done():
            self._headers_fut.cancel()  # nobody waits for it any more
        if not self._released:
            self._released = True
            self._leave_owner()
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()
            self._conn.finished(self, reusable=False)
