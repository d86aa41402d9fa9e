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

This module is the pool and the exchange (take, dial, start, request, the body upload); beside it:
upstream_request.py (the head), upstream_conn.py (the connection protocol and response parser),
upstream_response.py (the response the proxy reads) and upstream_errors.py (the failures).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from router.proxy.upstream_conn import MAX_HEAD, READ_MAX, READ_MIN, UpstreamConn
from router.proxy.upstream_errors import ConnectFailed, Stale, UpstreamError
from router.proxy.upstream_request import Prepared, prepare
from router.proxy.upstream_response import Response


class Upstream:
    """One pool of connections to every upstream; created inside the running event loop."""

    def __init__(self, *, dial_timeout: float = 30.0, idle_timeout: float = 15.0, max_idle: int = 10000,
                 keepalive: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.dial_timeout = dial_timeout or None
        self.tls = tls  # used for every https:// dial instead of the default contexts (Consul's CA, client cert)
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.keepalive = keepalive
        self._idle: dict[tuple, list[UpstreamConn]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: dict[bool, ssl.SSLContext] = {}
        self._closed = False
        self._scratch: memoryview | None = None  # see COPY_MAX; reads are one at a time on the loop's thread

    def _scratch_view(self) -> memoryview:
        view = self._scratch
        if view is None:
            view = self._scratch = memoryview(bytearray(READ_MAX))
        return view

    # --- pool
    def _put(self, conn: UpstreamConn) -> None:
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

    def _forget(self, conn: UpstreamConn) -> None:
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

    def take(self, key: tuple) -> UpstreamConn | None:
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

    async def dial(self, key: tuple) -> UpstreamConn:
        """A new connection for `key`; raises ConnectFailed."""
        scheme, host, port, verify = key
        loop = asyncio.get_running_loop()
        tls = (self.tls or self._ssl_context(verify)) if scheme == "https" else None
        try:
            coro = loop.create_connection(lambda: UpstreamConn(self, key, loop), host, port, ssl=tls,
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

    def start(self, conn: UpstreamConn, prep: Prepared, body: AsyncIterator[bytes] | bytes | None,
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

    async def exchange(self, conn: UpstreamConn, prep: Prepared, body: AsyncIterator[bytes] | bytes | None,
                       header_timeout: float, owner: Any = None) -> Response:
        """start() and wait for the headers (at most `header_timeout` seconds, 0 = no limit)."""
        resp = self.start(conn, prep, body, owner)
        await resp.headers(header_timeout)
        return resp

    @staticmethod
    async def _send_body(conn: UpstreamConn, resp: Response, body: AsyncIterator[bytes], chunked: bool) -> None:
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
