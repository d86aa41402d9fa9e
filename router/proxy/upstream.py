"""Pooled keep-alive HTTP/1.1 client for the hot path: asyncio Protocol + httptools parsing.

Why not aiohttp's client: profiling one worker (docs/datapath.md) showed aiohttp's request machinery
(ClientRequest, timers, StreamWriter, connector bookkeeping) costing more Python per request than the
whole rest of the proxy. A proxy needs far less: write the request head in one `transport.write`,
feed received bytes to httptools, hand body chunks over as they come. This module does only that.

Contract: `Upstream.request(...)` returns a `Response` once its headers arrived (`.status`,
`.raw_headers`, `.content.iter_any()`, `.release()`, `.close()`), or raises ConnectFailed (nothing
sent: another instance may be tried), UpstreamTimeout or UpstreamError. The proxy's tries
(router/proxy/attempts.py) use its parts: `prepare` (the head, once), `take`/`dial` (a connection),
`start` (write; Stale(written=False) if the connection is already closed) and `Response.headers()`.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httptools

# The slow-read bound (issue 15, docs/datapath.md "Slow clients"). The upstream socket is read while the
# consumer (the client's side) waits for bytes; a read that arrives while it is busy writing to its client
# is a read-ahead of at most READ_AHEAD bytes, after which reading pauses until the consumer finds nothing
# left (a pull, as Go's io.Copy with its one buffer). The client's side waits until its write buffer is
# empty (router/listen/http1_exchange.py), so a client that reads slowly holds one read (<= READ_MAX) there
# and one read-ahead here; the rest of the answer waits in the kernel's socket buffers and at the upstream.
# HIGH_WATER: buffered bytes a response may hold that nobody waits for before reading pauses: none, except
# while the first `proxy.retry.buffer` bytes are held back (Response.fill).
HIGH_WATER = 0
# Bytes of one response head (status line, headers, 1xx heads before it) we read before giving up: an
# upstream that never ends its head would otherwise be buffered until memory runs out (httptools sets no
# limit).  Go's Transport, fabio's, allows 10 MB; 1 MiB is ample for any real response (nginx: 4-8 KB).
MAX_HEAD = 1 << 20
# How much one upstream read may bring. What a read brings is held whole until the client takes it, so
# for a client that reads slowly it is the bound (one read on the client side, one read-ahead here). A read
# the consumer waits for starts at READ_MIN and doubles up to READ_MAX while the client keeps up (nothing
# left buffered when the next read comes). A trade-off measured on 200 MB downloads and slowhttptest -X
# (docs/datapath.md): 256 KiB reads cost less CPU per byte but let a slow reader hold far more; 16 KiB
# reads doubled the CPU of a download.
READ_MIN = 1 << 15
READ_MAX = 1 << 16
READ_AHEAD = 1 << 14  # a read of the body while the consumer is busy (see HIGH_WATER)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ConnectFailed(Exception):
    """The upstream could not be connected to: nothing was sent, so another instance may be tried."""


class UpstreamTimeout(Exception):
    """The upstream did not answer in time (504)."""


class UpstreamError(Exception):
    """The upstream connection broke or answered garbage (502)."""


class _Interrupted(Exception):
    """Response.arrived(): the wait ended, the response did not."""


class Stale(Exception):
    """A connection died before any byte of the response came back. `written`: the request (or part of
    it) had been written, so the upstream may have acted on it; if not, nothing was sent."""

    def __init__(self, text: str = "connection closed before any response", written: bool = True) -> None:
        super().__init__(text)
        self.written = written


class Response:
    """One upstream response: headers are complete; the body arrives through `iter_any()`."""

    __slots__ = ("status", "raw_headers", "_conn", "_chunks", "_buffered", "_done", "_error", "_waiter",
                 "_head", "_received", "_headers_fut", "_close_delimited", "_released", "_writer", "owner",
                 "_ahead")

    def __init__(self, conn: _Conn, head: bool) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._ahead = HIGH_WATER  # buffered bytes beyond which the upstream socket is not read (see HIGH_WATER)
        self._done = False  # the whole body arrived
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head = head
        self._received = False  # any byte of this response arrived
        self._headers_fut: asyncio.Future[None] = conn.loop.create_future()
        self._close_delimited = False
        self._released = False
        self._writer: asyncio.Task[None] | None = None  # still uploading the request body
        self.owner: Any = None  # an instance state whose `outstanding` counts this response (Upstream.start)

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

    def release(self) -> None:
        """Give the connection back to the pool if the body was read to its end; else close it."""
        if self._released:
            return
        self._released = True
        o = self.owner
        if o is not None:
            self.owner = None
            o.outstanding -= 1
        w = self._writer
        uploaded = w is None or (w.done() and not w.cancelled())
        if w is not None and not w.done():
            w.cancel()  # answered before the upload ended: that request is half-written, drop it
        self._conn.finished(self, reusable=uploaded and self._done and self._error is None and not self._chunks)

    def close(self) -> None:
        if not self._headers_fut.done():
            self._headers_fut.cancel()  # nobody waits for it any more
        if not self._released:
            self._released = True
            o = self.owner
            if o is not None:
                self.owner = None
                o.outstanding -= 1
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()
            self._conn.finished(self, reusable=False)


class _Conn(asyncio.BufferedProtocol):
    """One upstream TCP (or TLS) connection; parses responses with httptools.

    A BufferedProtocol to choose the read size (READ_MIN..READ_MAX): each read gets a fresh buffer that is
    handed on as it is (one copy fewer than `data_received`'s bytes; less CPU per downloaded byte than
    uvicorn's path had in an A/B)."""

    def __init__(self, pool: Upstream, key: tuple, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.lost = False
        self.paused_reading = False
        self.write_paused: asyncio.Future[None] | None = None
        self.reusable = True
        self.idle_since = 0.0
        self.uses = 0
        # Content-Length body bytes still to come. Once the head is parsed, such a body bypasses
        # httptools: its on_body copies every chunk, which was a third of a big download's CPU.
        self.raw_left = -1
        self.head_left = MAX_HEAD  # reset for each request (see MAX_HEAD)
        self.read_size = READ_MIN  # reset for each request (see READ_MIN)
        self._buf: bytearray | None = None  # the buffer of the read under way

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        size = self.read_size
        resp = self.resp
        if resp is not None:
            w = resp._waiter
            if w is not None and not w.done():  # the consumer waits for these bytes
                if size < READ_MAX and not resp._chunks:  # ... and took everything so far
                    size = self.read_size = size * 2
            elif resp._ahead == 0 and resp._headers_fut.done():
                size = READ_AHEAD  # nobody waits for them: a read-ahead (see HIGH_WATER)
        buf = self._buf = bytearray(size)
        # a memoryview, not the bytearray: asyncio's TLS layer fills a second TLS record into `buf[offset:]`,
        # which for a bytearray is a copy (the bytes were lost: a Consul answer over TLS read back as zeros)
        return memoryview(buf)

    def buffer_updated(self, nbytes: int) -> None:
        """The read landed in its own buffer, handed on without a copy (a memoryview when it is not full;
        the client transport, httptools and b"".join take either)."""
        buf = self._buf
        self._buf = None
        self.data_received(buf if nbytes == len(buf) else memoryview(buf)[:nbytes])  # type: ignore[arg-type,index]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: the connection is unusable
            self.reusable = False
            self.abort()
            return
        resp._received = True
        if self.raw_left > 0:
            self._raw_body(resp, data)
            return
        if not resp._headers_fut.done():
            self.head_left -= len(data)
            if self.head_left < 0:
                self.reusable = False
                resp._fail(UpstreamError(f"upstream response head longer than {MAX_HEAD} bytes"))
                self.abort()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.reusable = False
        except httptools.HttpParserError as e:
            self.reusable = False
            resp._fail(UpstreamError(f"bad response from upstream: {e}"))
            self.abort()

    def _raw_body(self, resp: Response, data: bytes) -> None:
        left = self.raw_left
        if len(data) > left:  # bytes beyond the announced length: deliver the body, never reuse
            data = data[:left]
            self.reusable = False
        self.raw_left = left - len(data)
        self._deliver(resp, data)
        if self.raw_left == 0:
            self.raw_left = -1
            self.parser = httptools.HttpResponseParser(self)  # the old one still waits for the body
            resp._done = True
            resp._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_exception(ConnectionResetError("upstream closed the connection"))
        resp = self.resp
        if resp is None:
            self.pool._forget(self)
            return
        if resp._close_delimited and resp._headers_fut.done() and not resp._done:
            resp._done = True  # the body ended with the connection, as announced
            resp._wake()
        elif not resp._received:
            resp._fail(Stale())
        else:
            resp._fail(UpstreamError("upstream closed the connection mid-response"))

    def pause_writing(self) -> None:
        if self.write_paused is None or self.write_paused.done():
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    # --- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp.raw_headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # 100 Continue & co: the real answer follows
            resp.raw_headers = []
            return
        resp.status = status
        if resp._head or status in (204, 304):
            resp._done = True
        else:
            chunked = False
            cl = -1
            for n, v in resp.raw_headers:
                ln = n.lower()
                if ln == b"content-length":
                    cl = int(v)
                elif ln == b"transfer-encoding" and b"chunked" in v.lower():
                    chunked = True
            resp._close_delimited = cl < 0 and not chunked
            if cl > 0 and not chunked:
                self.raw_left = cl  # on_body counts down what arrives with the head
        if not self.parser.should_keep_alive():
            self.reusable = False
        resp._headers_fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        assert resp is not None
        if resp._done:  # a body after HEAD/204/304: the connection is out of step
            self.reusable = False
            return
        if self.raw_left > 0:
            self.raw_left -= len(body)
        self._deliver(resp, body)

    def _deliver(self, resp: Response, body: bytes) -> None:
        resp._chunks.append(body)
        resp._buffered += len(body)
        w = resp._waiter
        if (resp._buffered > resp._ahead and (w is None or w.done()) and not self.paused_reading
                and self.transport is not None):  # nobody waits for these bytes: pause (see HIGH_WATER)
            self.paused_reading = True
            self.transport.pause_reading()
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or not resp._headers_fut.done():
            return  # end of a 1xx interim response
        if resp._head:  # the parser expected a body it will never get: start afresh for the next one
            self.parser = httptools.HttpResponseParser(self)
        self.raw_left = -1
        resp._done = True
        resp._wake()

    # --- used by Response / Upstream
    def want_read(self) -> None:
        if self.paused_reading and self.transport is not None and not self.lost:
            self.paused_reading = False
            self.transport.resume_reading()

    def finished(self, resp: Response, reusable: bool) -> None:
        if self.resp is not resp:
            return
        self.resp = None
        if reusable and self.reusable and not self.lost:
            self.want_read()  # the body ended: the next response is read as it comes
            if resp._head:
                self.parser = httptools.HttpResponseParser(self)
            self.pool._put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.lost:
            self.transport.close()



class Prepared:
    """A request's head, built once and sent on whichever connection of its key: see prepare()."""

    __slots__ = ("method", "key", "head", "chunked", "resendable")

    def __init__(self, method: str, key: tuple, head: bytes, chunked: bool, resendable: bool) -> None:
        self.method = method
        self.key = key  # (scheme, host, port, verify): the pool this request's connections come from
        self.head = head
        self.chunked = chunked
        self.resendable = resendable  # idempotent and its body can be rebuilt: may be sent twice


def prepare(method: str, url: str, headers: Sequence[tuple[str, str]], body: AsyncIterator[bytes] | bytes | None,
            *, verify_tls: bool = True) -> Prepared:
    """The request head for `url` (HTTP/1.1, Host from the URL unless given, framing for `body`)."""
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    hostport, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, _, port_s = hostport.rpartition(":")
    if not host or not port_s.isdigit():
        host, port_s = hostport, ("443" if scheme == "https" else "80")
    host = host.strip("[]")
    key = (scheme, host, int(port_s), verify_tls or scheme != "https")

    lines = [f"{method} {target} HTTP/1.1\r\n"]
    has_host = has_length = False
    for n, v in headers:
        if n == "host":
            has_host = True
        elif n == "content-length":
            has_length = True
        lines.append(f"{n}: {v}\r\n")
    if not has_host:
        lines.append(f"host: {hostport}\r\n")
    if isinstance(body, bytes):
        if not has_length:
            lines.append(f"content-length: {len(body)}\r\n")
    elif body is not None and not has_length:
        lines.append("transfer-encoding: chunked\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1", "replace")
    chunked = body is not None and not isinstance(body, bytes) and not has_length
    resendable = (body is None or isinstance(body, bytes)) and method in IDEMPOTENT
    return Prepared(method, key, head, chunked, resendable)


class Upstream:
    """One pool of connections to every upstream; created inside the running event loop."""

    def __init__(self, *, dial_timeout: float = 30.0, idle_timeout: float = 15.0, max_idle: int = 10000,
                 keepalive: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.dial_timeout = dial_timeout or None
        self.tls = tls  # used for every https:// dial instead of the default contexts (Consul's CA, client cert)
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.keepalive = keepalive
        self._idle: dict[tuple, list[_Conn]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: dict[bool, ssl.SSLContext] = {}
        self._closed = False

    # --- pool
    def _put(self, conn: _Conn) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = conn.loop.call_later(self.idle_timeout, self._sweep)

    def _forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle longer than proxy.idleconntimeout (upstreams drop them anyway)."""
        self._sweeper = None
        limit = time.monotonic() - self.idle_timeout
        loop = None
        for key, conns in list(self._idle.items()):
            keep = []
            for c in conns:
                if c.idle_since < limit or c.lost:
                    c.abort()
                else:
                    keep.append(c)
                    loop = c.loop
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if loop is not None:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def take(self, key: tuple) -> _Conn | None:
        """An idle pooled connection for `key`, or None."""
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = time.monotonic() - self.idle_timeout if self.idle_timeout > 0 else 0.0
        while idle:
            c = idle.pop()  # LIFO: the warmest connection
            if not c.lost and c.idle_since >= limit:
                return c
            c.abort()
        return None

    def _ssl_context(self, verify: bool) -> ssl.SSLContext:
        ctx = self._ssl.get(verify)
        if ctx is None:
            ctx = ssl.create_default_context()
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl[verify] = ctx
        return ctx

    async def dial(self, key: tuple) -> _Conn:
        """A new connection for `key`; raises ConnectFailed."""
        scheme, host, port, verify = key
        loop = asyncio.get_running_loop()
        tls = (self.tls or self._ssl_context(verify)) if scheme == "https" else None
        try:
            coro = loop.create_connection(lambda: _Conn(self, key, loop), host, port, ssl=tls,
                                          server_hostname=host if tls else None)
            if self.dial_timeout:
                _, conn = await asyncio.wait_for(coro, self.dial_timeout)
            else:
                _, conn = await coro
        except TimeoutError as e:
            raise ConnectFailed(f"connect timeout after {self.dial_timeout}s") from e
        except (OSError, ssl.SSLError) as e:
            raise ConnectFailed(f"{host}:{port}: {e}") from e
        if self.keepalive:
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(self.keepalive)))
        return conn  # type: ignore[return-value]

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for c in conns:
                c.abort()
        self._idle.clear()

    # --- requests
    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterator[bytes] | bytes | None,
        *,
        header_timeout: float = 0.0,
        verify_tls: bool = True,
    ) -> Response:
        """Send the request; return the response once its headers arrived. The caller must release it.

        One instance, at most one resend on a fresh connection when a pooled one turned out dead; the
        proxy's tries across instances (router/proxy/attempts.py) use the parts below directly."""
        prep = prepare(method, url, headers, body, verify_tls=verify_tls)
        conn = self.take(prep.key)
        if conn is not None:
            try:
                return await self.exchange(conn, prep, body, header_timeout)
            except Stale as e:
                # The head (and any body) was written, so the upstream may have acted on it: send it
                # again only if it can be rebuilt (no streamed body) AND the method is idempotent
                # (RFC 9110 9.2.2, RFC 9112 9.3.1). A bodiless POST or PATCH is not resent: 502.
                if e.written and not prep.resendable:
                    raise UpstreamError("reused upstream connection closed before answering") from e
        conn = await self.dial(prep.key)
        try:
            return await self.exchange(conn, prep, body, header_timeout)
        except Stale as e:
            if not e.written:  # closed before we wrote a byte: nothing was sent, as good as refused
                raise ConnectFailed(f"{prep.key[1]}:{prep.key[2]}: {e}") from e
            raise UpstreamError("upstream closed the connection without answering") from e

    def start(self, conn: _Conn, prep: Prepared, body: AsyncIterator[bytes] | bytes | None,
              owner: Any = None) -> Response:
        """Write the request on `conn`; the Response's headers are still to come (`await resp.headers()`).

        Raises Stale(written=False) when the connection is already closed: nothing was sent, so any
        method may go elsewhere. (uvloop raises RuntimeError on such a write and plain asyncio drops it
        silently, which left the request waiting forever: issue 17.) `owner` (an instance state with an
        `outstanding` count) is counted up now and down when the response is released or closed."""
        transport = conn.transport
        if conn.lost or transport is None or transport.is_closing():
            conn.reusable = False
            self._forget(conn)
            raise Stale("connection closed before the request was written", written=False)
        resp = Response(conn, prep.method == "HEAD")
        conn.resp = resp
        conn.head_left = MAX_HEAD
        conn.read_size = READ_MIN
        conn.uses += 1
        try:
            if body is None:
                transport.write(prep.head)
            elif isinstance(body, bytes):
                transport.write(prep.head + body)
            else:
                transport.write(prep.head)
                resp._writer = asyncio.ensure_future(self._send_body(conn, resp, body, prep.chunked))
        except (RuntimeError, OSError) as e:  # closed under us between the check and the write
            conn.resp = None
            conn.abort()
            raise Stale(f"connection closed before the request was written: {e}", written=False) from e
        if owner is not None:
            owner.outstanding += 1
            resp.owner = owner
        return resp

    async def exchange(self, conn: _Conn, prep: Prepared, body: AsyncIterator[bytes] | bytes | None,
                       header_timeout: float, owner: Any = None) -> Response:
        """start() and wait for the headers (at most `header_timeout` seconds, 0 = no limit)."""
        resp = self.start(conn, prep, body, owner)
        await resp.headers(header_timeout)
        return resp

    @staticmethod
    async def _send_body(conn: _Conn, resp: Response, body: AsyncIterator[bytes], chunked: bool) -> None:
        """Stream the request body up, waiting whenever the socket's write buffer is full."""
        transport = conn.transport
        assert transport is not None
        try:
            async for chunk in body:
                if conn.lost:
                    break
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    transport.write(chunk)
                if conn.write_paused is not None and not conn.write_paused.done():
                    await conn.write_paused
            if chunked and not conn.lost:
                transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - the client left (ClientGone) or the socket broke
            conn.reusable = False
            if not resp._headers_fut.done():
                resp._fail(e if not isinstance(e, OSError) else UpstreamError(str(e)))
            conn.abort()
