"""HTTP/2 on one client connection (ALPN `h2` on TLS listeners, prior knowledge on `proto=grpc` ones), with
libnghttp2 as the protocol engine (router/proxy/nghttp2.py: frames, HPACK, HTTP messaging rules, flow
control). Each stream is one request for the proxy core, through the same Exchange interface the HTTP/1.1
listener implements (router/proxy/exchange.py), so routing, headers, the upstream pool (still HTTP/1.1 to
the instances), the access log and the counters are shared.

Bounded per connection, and why:

* **Streams**: at most `MAX_STREAMS` (100) open at once (SETTINGS_MAX_CONCURRENT_STREAMS; once the client
  has acknowledged it, a stream beyond it ends the connection with GOAWAY PROTOCOL_ERROR, before that it is
  refused with RST_STREAM REFUSED_STREAM).
* **Request bodies**: flow control is the bound. A stream's received bytes are acknowledged (WINDOW_UPDATE)
  only when the core has taken them, so a client can have at most one window (64 KiB) per stream and the
  connection's window in flight, never more than we read on.
* **Response bodies**: `write()` queues bytes nghttp2 takes as the peer's windows allow, and waits while a
  stream has more than `WRITE_HIGH` queued (or the socket's write buffer is full): a client that reads
  slowly holds up its own stream's upstream, as on HTTP/1.1.
* **Headers**: the header list is limited to `max_head` bytes (SETTINGS_MAX_HEADER_LIST_SIZE, counted as
  RFC 9113 does while the block is decoded); a larger one ends the connection with GOAWAY ENHANCE_YOUR_CALM.
* **Rapid reset (CVE-2023-44487)**: streams the client resets before we answered them are counted; more
  than `RESET_BUDGET` in `RESET_WINDOW` seconds ends the connection with GOAWAY ENHANCE_YOUR_CALM.
* **SETTINGS and PING floods**: more than `CONTROL_BUDGET` of either in `RESET_WINDOW` seconds does the same
  (each would otherwise cost an acknowledgement we write).
* **Malformed frames**: nghttp2 answers them with GOAWAY (PROTOCOL_ERROR, COMPRESSION_ERROR, ...); the
  connection is closed once that is written.

Past 400 lines on purpose: the connection, its per-stream Exchange and these defences read best together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from router.listen.flow import GONE, WriteFlow
from router.listen.tlsinfo import tls_extension
from router.proxy import nghttp2 as ng
from router.proxy.exchange import ClientGone, Headers
from router.proxy.grpc import is_grpc

if TYPE_CHECKING:
    from router.listen.server import Listener

log = logging.getLogger("router.h2")

NO_ROUTE = object()  # a gRPC call no route matches (answered NOT_FOUND, as fabio's gRPC server)
MAX_STREAMS = 100
RESET_WINDOW = 10.0
RESET_BUDGET = 200  # client resets of unanswered streams per window
CONTROL_BUDGET = 200  # SETTINGS or PING frames per window
WRITE_HIGH = 64 * 1024
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                        b"te", b"trailer"})
_lib = ng.lib
_nva = ng.nva
_feed = ng.feed


class H2Stream:
    """One request/response on an HTTP/2 connection: the Exchange the core answers through."""

    __slots__ = ("conn", "sid", "scope", "chunks", "body_done", "gone", "waiter", "status", "size", "head",
                 "finished", "sent", "task", "read_by", "write_by", "out", "eof", "trailers", "bodyless")

    def __init__(self, conn: H2, sid: int, scope: dict) -> None:
        self.conn = conn
        self.sid = sid
        self.scope = scope
        self.chunks: list[bytes] = []
        self.body_done = False
        self.gone = False
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.size = 0
        self.head: Headers | None = None
        self.finished = False
        self.sent = False
        self.task: asyncio.Task | None = None
        self.read_by = self.write_by = 0.0  # rt=/wt= deadlines (monotonic), 0 = none
        self.out = bytearray()  # answer bytes nghttp2 has yet to take (H2.on_read)
        self.eof = False
        self.trailers: Headers | None = None
        self.bodyless = False

    # --- the request body
    def body(self) -> H2Stream:
        return self

    def __aiter__(self) -> H2Stream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.chunks:
                data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
                self.chunks.clear()
                self.conn.consumed(self, len(data))  # now the client may send more
                return data
            if self.gone:
                raise ClientGone()
            if self.body_done:
                raise StopAsyncIteration
            await self._wait()

    def whole_body(self, limit: int) -> bytes | None:
        """The whole request body, taken (its credit given back), when all of it has arrived and it is under
        `limit` bytes; otherwise None, and nothing taken (the caller reads body() instead)."""
        if not self.body_done or self.gone:
            return None
        n = sum(map(len, self.chunks))
        if n >= limit:
            return None
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.conn.consumed(self, n)
        return data

    async def _wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- the answer
    def start(self, status: int, headers: Headers) -> None:
        self.status = status
        # nghttp2 checks nothing of what we send: names are lower-cased here, and the connection-specific
        # ones HTTP/2 forbids are dropped; values come from a parser or from the config
        self.head = [(b":status", str(status).encode())] + [(ln, v) for ln, v in ((n.lower(), v) for n, v in headers)
                                                          if ln not in HOP_BY_HOP]
        self.bodyless = self.scope["method"] == "HEAD" or status in (204, 304)

    def _submit(self, end: bool) -> None:
        """Hand the answer's HEADERS to nghttp2: alone with END_STREAM when nothing follows, otherwise with
        the data provider (H2.on_read) that sends `out`, then the END_STREAM or the trailers."""
        head, self.head = self.head, None
        if head is None:
            _lib.nghttp2_session_resume_data(self.conn.ng.ptr, self.sid)  # more to take (an error if not waiting)
            return
        arr, n, _keep = _nva(head)
        conn = self.conn
        if end and not self.out and self.trailers is None:
            rv = _lib.nghttp2_submit_response(conn.ng.ptr, self.sid, arr, n, ng.NULL)
        else:
            conn.sending[self.sid] = self
            rv = _lib.nghttp2_submit_response(conn.ng.ptr, self.sid, arr, n, ng.PROVIDER)
        if rv != 0:  # the stream is gone already (closed by the client, or past a GOAWAY)
            conn.sending.pop(self.sid, None)
            self.gone = True
            raise ClientGone()
        self.sent = True

    async def write(self, data: bytes) -> None:
        conn = self.conn
        if self.gone or conn.lost:
            raise ClientGone()
        if self.bodyless:
            return  # a HEAD or 204/304 answer: its HEADERS go with END_STREAM at end()
        if data:
            self.out += data
            self.size += len(data)
        self._submit(False)
        conn.flush()
        while len(self.out) >= WRITE_HIGH:  # the peer's windows hold it: wait for on_read to take some
            await self._wait()
            if self.gone or conn.lost:
                raise ClientGone()
        if conn.write_paused:
            await conn.drain()

    async def end(self) -> None:
        if self.finished:
            return
        conn = self.conn
        if not (self.gone or conn.lost):
            self.eof = True
            with contextlib.suppress(ClientGone):  # the client closed the stream meanwhile: nothing to end
                self._submit(True)
            conn.flush()
        conn.finish(self)

    async def end_with_trailers(self, trailers: Headers) -> None:
        """End the stream with a trailing HEADERS frame (gRPC's grpc-status)."""
        if self.finished:
            return
        conn = self.conn
        if not (self.gone or conn.lost):
            self.trailers = [(n.lower(), v) for n, v in trailers if n[:1] != b":"]
            self.eof = True
            with contextlib.suppress(ClientGone):
                self._submit(False)
            conn.flush()
        conn.finish(self)

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        self.start(status, headers)
        if body and self.scope["method"] != "HEAD":
            await self.write(body)
        await self.end()


class H2(WriteFlow, asyncio.Protocol):
    """One client connection speaking HTTP/2 to the proxy core (see the module docstring). nghttp2 calls
    the `on_*` methods from inside `data_received` (mem_recv) and `flush_now` (mem_send)."""

    def __init__(self, listener: Listener, client: tuple[str, int] | None = None) -> None:
        self.listener = listener
        self.core = listener.core
        self.loop = listener.loop
        self.client = client
        self.server: tuple[str, int] | None = None
        self.tls: dict[str, int] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.ng = ng.Session(server=True)
        self.head_limit = min(listener.max_head, 1 << 20)
        self.streams: dict[int, H2Stream] = {}  # requests not yet answered
        self.sending: dict[int, H2Stream] = {}  # answers nghttp2 is still taking bytes of (on_read)
        self.cur: Headers = []  # the header block being decoded (on_begin_headers .. on_frame)
        self.cur_size = 0
        self.peer_goaway = False
        self.flush_pending = False
        self.lost = False
        self.closing = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.idle_since = listener.now
        self.window_start = time.monotonic()
        self.resets = 0
        self.control = 0
        self.rt = self.wt = 0.0  # the listener's rt=/wt=, per stream as Go's HTTP/2 server applies them
        self.grpc_calls = 0  # gRPC calls being forwarded (a graceful stop gives them proxy.grpcshutdowntimeout)

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH)  # type: ignore[attr-defined]
        if self.client is None:
            peer = transport.get_extra_info("peername")
            self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("sockname")
        self.server = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        self.tls = tls_extension(transport)
        self.listener.conns.add(self)
        if self.listener.deadlines and self.server is not None and self.server[1] in self.listener.deadlines:
            self.rt, self.wt = self.listener.deadlines[self.server[1]]
            self.listener.timed.add(self)
        self.ng.open(self)
        self.ng.settings({ng.SETTINGS_MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                          ng.SETTINGS_MAX_HEADER_LIST_SIZE: self.head_limit, ng.SETTINGS_ENABLE_PUSH: 0})
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.ng.close()  # no more callbacks into us; the C session goes with this object
        self.listener.conns.discard(self)
        self.listener.timed.discard(self)
        for s in [*self.streams.values(), *self.sending.values()]:
            self._left(s)
        self.streams.clear()  # no cycles through the streams: this object, and nghttp2's session, go now
        self.sending.clear()
        self.resume_writing()
        self.transport = GONE  # type: ignore[assignment]  # why: router/listen/flow.py

    def flush(self) -> None:
        """Write what nghttp2 has queued, once per event-loop turn: the frames of every stream answered in
        one turn leave in one TLS record instead of one each (TLS records, not frames, are the cost here)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self.flush_pending = False
        if self.lost:
            return
        data = self.ng.send()
        if data:
            self.transport.write(data)
        if not self.ng.alive():  # after a GOAWAY of ours (an error, or the last stream after a graceful one)
            self._close_all()

    def data_received(self, data: bytes) -> None:
        n = self.ng.recv(data)
        if self.lost:
            return
        if n < 0:  # bad preface, a flood nghttp2 caught, or one of our callbacks failed
            log.info("h2 %s: %s; closing the connection", self.client[0] if self.client else "?", ng.strerror(n))
            self.flush_now()
            self._close_all()
            return
        if self.peer_goaway:  # the client is done: what is in flight ends quietly with the connection
            self.closing = True
            self.flush_now()
            self.transport.close()
            return
        self.flush()

    # --- nghttp2's callbacks (router/proxy/nghttp2.py Engine)
    def on_begin_headers(self, sid: int) -> int:
        self.cur = []
        self.cur_size = 0
        return 0

    def on_header(self, name: bytes, value: bytes) -> int:
        self.cur_size += len(name) + len(value) + 32  # RFC 9113 6.5.2's size of a header list
        if self.cur_size > self.head_limit:
            log.info("h2 %s: a header list over %d bytes; closing the connection",
                     self.client[0] if self.client else "?", self.head_limit)
            _lib.nghttp2_session_terminate_session(self.ng.ptr, ng.ENHANCE_YOUR_CALM)
            return ng.ERR_TEMPORAL_CALLBACK_FAILURE  # the stream is reset, the rest of its block ignored
        self.cur.append((name, value))
        return 0

    def on_frame(self, kind: int, flags: int, sid: int, frame: Any) -> int:
        if kind == ng.HEADERS:
            if frame.cat == ng.HCAT_REQUEST:
                self._request(sid, self.cur, flags & ng.FLAG_END_STREAM)
            elif flags & ng.FLAG_END_STREAM:  # the request's trailers
                s = self.streams.get(sid)
                if s is not None:
                    s.body_done = True
                    s.wake()
        elif kind == ng.DATA:
            if flags & ng.FLAG_END_STREAM:
                s = self.streams.get(sid)
                if s is not None:
                    s.body_done = True
                    s.wake()
        elif kind == ng.RST_STREAM:
            s = self.streams.pop(sid, None)
            if s is not None:
                if not s.finished:
                    self._count("resets", RESET_BUDGET)
                self._left(s)
        elif kind == ng.SETTINGS or kind == ng.PING:
            if not flags & ng.FLAG_ACK:
                self._count("control", CONTROL_BUDGET)
        elif kind == ng.GOAWAY:
            self.peer_goaway = True
        return 0

    def on_data(self, sid: int, data: bytes) -> int:
        s = self.streams.get(sid)
        if s is None or s.finished:  # answered already: the rest is dropped, the window given back
            _lib.nghttp2_session_consume(self.ng.ptr, sid, len(data))
        else:
            s.chunks.append(data)
            s.wake()
        return 0

    def on_close(self, sid: int, code: int) -> int:
        for d in (self.streams, self.sending):
            s = d.pop(sid, None)
            if s is not None:  # closed before its answer ended (reset by nghttp2 or the client)
                self._left(s)
        return 0

    def on_read(self, sid: int, buf: Any, length: int, flags: Any) -> int:
        """nghttp2 takes up to `length` bytes of stream `sid`'s answer (its windows allow that much)."""
        s = self.sending.get(sid)
        if s is None:
            return ng.ERR_TEMPORAL_CALLBACK_FAILURE
        n = _feed(s, buf, length, WRITE_HIGH)
        if s.eof and not s.out and n >= 0:  # the last of it: END_STREAM, or the trailers after it
            if s.trailers is not None:
                flags[0] |= ng.DATA_FLAG_EOF | ng.DATA_FLAG_NO_END_STREAM
                arr, k, _keep = _nva(s.trailers)
                _lib.nghttp2_submit_trailer(self.ng.ptr, sid, arr, k)
            else:
                flags[0] |= ng.DATA_FLAG_EOF
            del self.sending[sid]
        return n

    # --- the defences
    def _count(self, what: str, budget: int) -> None:
        now = time.monotonic()
        if now - self.window_start > RESET_WINDOW:
            self.window_start, self.resets, self.control = now, 0, 0
        n = getattr(self, what) + 1
        setattr(self, what, n)
        if n > budget:
            log.info("h2 %s: too many %s (%d in %gs); closing the connection",
                     self.client[0] if self.client else "?", what, n, RESET_WINDOW)
            _lib.nghttp2_session_terminate_session(self.ng.ptr, ng.ENHANCE_YOUR_CALM)

    @staticmethod
    def _left(s: H2Stream) -> None:
        """The client is gone from stream `s` (reset, closed, or its connection lost): a request still being
        served has its task cancelled, so the core stops waiting on the upstream and ends that exchange
        as on ClientGone (router/proxy/exchange.py client_left; a gRPC call resets the instance's stream)."""
        s.gone = True
        s.wake()
        if not s.finished and s.task is not None:
            s.task.cancel()

    def _close_all(self) -> None:
        for s in [*self.streams.values(), *self.sending.values()]:
            self._left(s)
        if not self.lost:
            self.transport.close()
        self.lost = True

    def _request(self, sid: int, fields: Headers, ended: int) -> None:
        if self.closing:  # after our GOAWAY: a stream the client opened anyway is refused (it may retry it)
            _lib.nghttp2_submit_rst_stream(self.ng.ptr, 0, sid, ng.REFUSED_STREAM)
            return
        method = path = authority = b""
        headers: Headers = []
        cookies: list[bytes] = []
        for name, value in fields:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            elif name == b"cookie":
                cookies.append(value)
            else:
                headers.append((name, value))
        if cookies:  # RFC 9113 8.2.3: the split cookie crumbs are one header again for HTTP/1.1
            headers.append((b"cookie", b"; ".join(cookies)))
        if authority and not any(n == b"host" for n, _ in headers):
            headers.insert(0, (b"host", authority))
        if not ended and not any(n == b"content-length" for n, _ in headers):
            # a body of unknown length follows (HTTP/2 needs no header for it): HTTP/1.1 needs one to send it
            # at all, so the core sees the framing it would on HTTP/1.1 (and sends the body chunked)
            headers.append((b"transfer-encoding", b"chunked"))
        raw_path, _, query = path.partition(b"?")
        text = raw_path.decode("ascii", "replace")
        scope: dict[str, Any] = {
            "type": "http", "method": method.decode("ascii", "replace"), "http_version": "2.0", "path":
            unquote(text) if "%" in text else text, "raw_path": raw_path, "query_string": query, "headers": headers,
            "client": self.client, "server": self.server, "scheme": "https" if self.tls is not None else "http"}
        if self.tls is not None:
            scope["extensions"] = {"tls": self.tls}
        s = H2Stream(self, sid, scope)
        if ended:
            s.body_done = True
        if self.rt or self.wt:
            now = time.monotonic()
            s.read_by = now + self.rt if self.rt and not s.body_done else 0.0
            s.write_by = now + self.wt if self.wt else 0.0
        self.streams[sid] = s
        s.task = self.loop.create_task(self._run(s))

    def _grpc_target(self, scope: dict):  # type: ignore[no-untyped-def]
        """(route, its grpc:// or grpcs:// target) of a gRPC call, NO_ROUTE when no route matches it, or
        None (then the core serves it)."""
        if getattr(self.listener, "grpc", None) is None or not is_grpc(scope["headers"]):
            return None
        table = self.core.state.table
        host = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"host"), "")
        route = table.lookup(host, scope["path"], tls=self.tls is not None) if table is not None else None
        if route is None:
            return NO_ROUTE if table is not None else None  # no table yet: the core's 503
        target = route.pick(self.core.strategy)
        return (route, target) if target is not None and target.scheme in ("grpc", "grpcs") else None

    async def _run(self, s: H2Stream) -> None:
        try:
            found = self._grpc_target(s.scope)
            if found is NO_ROUTE:
                await self.listener.grpc.no_route(s)  # type: ignore[attr-defined]
            elif found is not None:  # a call that ends without trailers (its instance went) is reset below
                route, target = found
                rs = route.stats.get(target.url) if route.stats is not None else None
                self.grpc_calls += 1
                try:
                    await self.listener.grpc.forward(  # type: ignore[attr-defined]
                        s.scope, s, target, rs or self.core.stats.attach(route, target))
                finally:
                    self.grpc_calls -= 1
            else:
                await self.core.serve(s.scope, s)
        except (ClientGone, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("%s %s: the proxy failed", s.scope["method"], s.scope["path"])
            if not s.sent and not self.lost:
                try:
                    await s.respond(500, [(b"content-type", b"text/plain; charset=utf-8")], b"internal error\n")
                except ClientGone:
                    pass
        if not s.finished:
            if not self.lost and s.sid in self.streams:
                _lib.nghttp2_submit_rst_stream(self.ng.ptr, 0, s.sid, ng.INTERNAL_ERROR)
                self.flush()
            self.finish(s)

    def consumed(self, s: H2Stream, n: int) -> None:
        """Credit back for `n` bytes the core took (or that were dropped): also once the stream has ended,
        since the connection's window counted them (nghttp2 then updates that one only)."""
        if n and not self.lost:
            _lib.nghttp2_session_consume(self.ng.ptr, s.sid, n)
            self.flush()

    def finish(self, s: H2Stream) -> None:
        s.finished = True
        self.streams.pop(s.sid, None)
        if s.chunks:  # answered before its body was read: what came is dropped, its credit given back
            self.consumed(s, sum(map(len, s.chunks)))
            s.chunks.clear()
        self.listener.requests += 1
        if not self.streams:
            self.idle_since = self.listener.now
            if self.closing and not self.lost and not self.sending:
                self.flush_now()
                if not self.lost:
                    self.transport.close()

    # --- the listener's housekeeping
    def overdue(self, now: float) -> bool:
        """Reset each stream past its rt= (its body still not in) or wt= (its answer not written), as Go's
        HTTP/2 server does (RST_STREAM INTERNAL_ERROR); the connection and its other streams go on."""
        for s in [s for s in self.streams.values()
                  if (0.0 < s.read_by < now and not s.body_done) or 0.0 < s.write_by < now]:
            self.streams.pop(s.sid, None)
            self._left(s)
            if not self.lost:
                _lib.nghttp2_submit_rst_stream(self.ng.ptr, 0, s.sid, ng.INTERNAL_ERROR)
                self.flush()
        return False

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY (no new streams); close once the open ones are answered (nghttp2 goes on
        serving the streams the GOAWAY's last stream id covers)."""
        if self.closing:
            return
        self.closing = True
        if not self.lost:
            _lib.nghttp2_submit_goaway(self.ng.ptr, 0, _lib.nghttp2_session_get_last_proc_stream_id(self.ng.ptr),
                                       ng.NO_ERROR, ng.NULL, 0)
            self.flush_now()
            if not self.streams and not self.lost:
                self.transport.close()

    def idle(self, limit: float) -> bool:
        return not self.streams and self.idle_since < limit
