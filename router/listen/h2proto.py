"""HTTP/2 on one client connection (ALPN `h2` on TLS listeners), with python-hyper's `h2` as the
protocol engine. Each stream is one request for the proxy core, through the same Exchange interface the
HTTP/1.1 listener implements (router/proxy/exchange.py), so routing, headers, the upstream pool (still
HTTP/1.1 to the instances), the access log and the counters are shared.

Bounded per connection, and why:

* **Streams**: at most `MAX_STREAMS` (100) open at once (SETTINGS_MAX_CONCURRENT_STREAMS; h2 refuses
  more with RST_STREAM REFUSED_STREAM).
* **Request bodies**: flow control is the bound. A stream's received bytes are acknowledged (WINDOW_UPDATE)
  only when the core has taken them, so a client can have at most one window (64 KiB) per stream and the
  connection's window in flight, never more than we read on.
* **Response bodies**: `write()` sends as much as the peer's windows allow and waits for WINDOW_UPDATE
  (and for the socket's write buffer to drain) otherwise: a client that reads slowly holds up its own
  stream's upstream, as on HTTP/1.1.
* **Headers**: the header list is limited to `max_head` bytes (SETTINGS_MAX_HEADER_LIST_SIZE, enforced by
  the HPACK decoder); a larger one ends the connection with GOAWAY.
* **Rapid reset (CVE-2023-44487)**: streams the client resets before we answered them are counted; more
  than `RESET_BUDGET` in `RESET_WINDOW` seconds ends the connection with GOAWAY ENHANCE_YOUR_CALM.
* **SETTINGS and PING floods**: more than `CONTROL_BUDGET` of either in `RESET_WINDOW` seconds does the same
  (each would otherwise cost an acknowledgement we write).
* **Malformed frames** (h2's ProtocolError): GOAWAY PROTOCOL_ERROR, connection closed.

Past 400 lines on purpose: the connection, its per-stream Exchange and these defences read best together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from router.listen.flow import GONE, WriteFlow
from router.listen.tlsinfo import tls_extension
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


class H2Stream:
    """One request/response on an HTTP/2 connection: the Exchange the core answers through."""

    __slots__ = ("conn", "sid", "scope", "chunks", "body_done", "gone", "waiter", "status", "size", "head",
                 "finished", "sent", "task", "unacked", "read_by", "write_by")

    def __init__(self, conn: H2, sid: int, scope: dict) -> None:
        self.conn = conn
        self.sid = sid
        self.scope = scope
        self.chunks: list[tuple[bytes, int]] = []  # (data, flow-controlled length)
        self.body_done = False
        self.gone = False
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.size = 0
        self.head: Headers | None = None
        self.finished = False
        self.sent = False
        self.task: asyncio.Task | None = None
        self.unacked = 0
        self.read_by = self.write_by = 0.0  # rt=/wt= deadlines (monotonic), 0 = none

    # --- the request body
    def body(self) -> H2Stream:
        return self

    def __aiter__(self) -> H2Stream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.chunks:
                data = b"".join(c for c, _ in self.chunks)
                n = sum(f for _, f in self.chunks)
                self.chunks.clear()
                self.conn.consumed(self, n)  # now the client may send more
                return data
            if self.gone:
                raise ClientGone()
            if self.body_done:
                raise StopAsyncIteration
            await self._wait()

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
        # h2 neither checks nor normalises what we send (H2.__init__): names are lower-cased here, and the
        # connection-specific ones HTTP/2 forbids are dropped; values come from a parser or from the config
        self.head = [(b":status", str(status).encode())] + [(ln, v) for ln, v in ((n.lower(), v) for n, v in headers)
                                                          if ln not in HOP_BY_HOP]

    def _send_head(self, end: bool) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.conn.h2.send_headers(self.sid, head, end_stream=end)
            self.sent = True

    async def write(self, data: bytes) -> None:
        try:
            conn = self.conn
            if self.gone or conn.lost:
                raise ClientGone()
            self._send_head(False)
            if self.scope["method"] == "HEAD" or self.status in (204, 304):
                conn.flush()
                return
            view = memoryview(data)
            while view:
                if self.gone or conn.lost:
                    raise ClientGone()
                window = min(conn.h2.local_flow_control_window(self.sid), conn.h2.max_outbound_frame_size)
                if window <= 0:
                    conn.flush()
                    await self._wait()  # a WINDOW_UPDATE (or the stream's end) wakes us
                    continue
                chunk, view = view[:window], view[window:]
                conn.h2.send_data(self.sid, chunk.tobytes())
                self.size += len(chunk)
            conn.flush()
            if conn.write_paused:
                await conn.drain()
        except h2.exceptions.ProtocolError:  # the client closed the stream or the connection (GOAWAY)
            self.gone = True
            raise ClientGone() from None

    async def end(self) -> None:
        if self.finished:
            return
        conn = self.conn
        if not (self.gone or conn.lost):
            try:
                if self.head is not None:
                    self._send_head(True)
                else:
                    conn.h2.end_stream(self.sid)
            except h2.exceptions.ProtocolError:  # the client closed the stream or the connection (GOAWAY)
                self.gone = True
            conn.flush()
        conn.finish(self)

    async def end_with_trailers(self, trailers: Headers) -> None:
        """End the stream with a trailing HEADERS frame (gRPC's grpc-status)."""
        if self.finished:
            return
        conn = self.conn
        if not (self.gone or conn.lost):
            try:
                self._send_head(False)
                conn.h2.send_headers(self.sid, [(n.lower(), v) for n, v in trailers if n[:1] != b":"],
                                     end_stream=True)
            except h2.exceptions.ProtocolError:  # the client closed the stream or the connection (GOAWAY)
                self.gone = True
            conn.flush()
        conn.finish(self)

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        self.start(status, headers)
        if body and self.scope["method"] != "HEAD":
            await self.write(body)
        await self.end()


class H2(WriteFlow, asyncio.Protocol):
    """One client connection speaking HTTP/2 to the proxy core (see the module docstring)."""

    def __init__(self, listener: Listener, client: tuple[str, int] | None = None) -> None:
        self.listener = listener
        self.core = listener.core
        self.loop = listener.loop
        self.client = client
        self.server: tuple[str, int] | None = None
        self.tls: dict[str, int] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # What arrives is validated and normalised (hostile clients); what we send is built by H2Stream from
        # headers the upstream parser or the router made, so h2's per-header checks on it (a generator chain
        # per header, ~15 % of sending an answer's HEADERS: bench/tls_bench.py) are skipped
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        head_limit = min(listener.max_head, 1 << 20)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: head_limit,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.h2.decoder.max_header_list_size = head_limit  # enforced from the first HEADERS (h2 waits for the ACK)
        self.streams: dict[int, H2Stream] = {}
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
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.listener.conns.discard(self)
        self.listener.timed.discard(self)
        for s in self.streams.values():
            s.gone = True
            s.wake()
        self.resume_writing()
        self.transport = GONE  # type: ignore[assignment]  # why: router/listen/flow.py

    def flush(self) -> None:
        """Write what h2 has queued, once per event-loop turn: the frames of every stream answered in one
        turn leave in one TLS record instead of one each (TLS records, not frames, are the cost here)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and not self.lost:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:  # h2 has queued its GOAWAY (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)
            log.info("h2 %s: %s; closing the connection", self.client[0] if self.client else "?", e)
            self.flush_now()
            self._close_all()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                s = self.streams.get(ev.stream_id)
                if s is None or s.finished:  # answered already: the rest is dropped, the window given back
                    if ev.flow_controlled_length:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                s.chunks.append((ev.data, ev.flow_controlled_length))
                s.wake()
            elif isinstance(ev, h2.events.StreamEnded):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.body_done = True
                    s.wake()
            elif isinstance(ev, h2.events.StreamReset):
                s = self.streams.pop(ev.stream_id, None)
                if s is not None:
                    s.gone = True
                    s.wake()
                    if not s.finished and ev.remote_reset:
                        self._count("resets", RESET_BUDGET)
                        if s.task is not None:
                            s.task.cancel()
            elif isinstance(ev, h2.events.WindowUpdated):
                targets = self.streams.values() if ev.stream_id == 0 else filter(None, [self.streams.get(ev.stream_id)])
                for s in targets:
                    s.wake()
            elif isinstance(ev, h2.events.RemoteSettingsChanged | h2.events.PingReceived):
                self._count("control", CONTROL_BUDGET)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closing = True
                self.transport.close()
                return
            if self.lost:
                return
        self.flush()

    def _count(self, what: str, budget: int) -> None:
        now = time.monotonic()
        if now - self.window_start > RESET_WINDOW:
            self.window_start, self.resets, self.control = now, 0, 0
        n = getattr(self, what) + 1
        setattr(self, what, n)
        if n > budget:
            self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, f"too many {what} ({n} in {RESET_WINDOW:g}s)")

    def _goaway(self, code: h2.errors.ErrorCodes, why: str) -> None:
        log.info("h2 %s: %s; closing the connection", self.client[0] if self.client else "?", why)
        try:
            self.h2.close_connection(error_code=code)
            self.flush_now()
        except h2.exceptions.ProtocolError:
            pass
        self._close_all()

    def _close_all(self) -> None:
        for s in self.streams.values():
            s.gone = True
            s.wake()
            if s.task is not None and not s.finished:
                s.task.cancel()
        if not self.lost:
            self.transport.close()
        self.lost = True

    def _request(self, ev: h2.events.RequestReceived) -> None:
        if self.closing:  # after our GOAWAY: a stream the client opened anyway is refused (it may retry it)
            try:
                self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.ProtocolError:
                pass
            return
        method = path = authority = b""
        headers: Headers = []
        cookies: list[bytes] = []
        for name, value in ev.headers:
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
        raw_path, _, query = path.partition(b"?")
        text = raw_path.decode("ascii", "replace")
        scope: dict[str, Any] = {
            "type": "http", "method": method.decode("ascii", "replace"), "http_version": "2.0", "path":
            unquote(text) if "%" in text else text, "raw_path": raw_path, "query_string": query, "headers": headers,
            "client": self.client, "server": self.server, "scheme": "https" if self.tls is not None else "http"}
        if self.tls is not None:
            scope["extensions"] = {"tls": self.tls}
        s = H2Stream(self, ev.stream_id, scope)
        if ev.stream_ended is not None:
            s.body_done = True
        if self.rt or self.wt:
            now = time.monotonic()
            s.read_by = now + self.rt if self.rt and not s.body_done else 0.0
            s.write_by = now + self.wt if self.wt else 0.0
        self.streams[ev.stream_id] = s
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
                try:
                    self.h2.reset_stream(s.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    self.flush()
                except h2.exceptions.ProtocolError:
                    pass
            self.finish(s)

    def consumed(self, s: H2Stream, n: int) -> None:
        """Credit back for `n` bytes the core took (or that were dropped): also once the stream has ended,
        since the connection's window counted them (h2 then updates that one only)."""
        if n and not self.lost:
            try:
                self.h2.acknowledge_received_data(n, s.sid)
                self.flush()
            except h2.exceptions.ProtocolError:
                pass

    def finish(self, s: H2Stream) -> None:
        s.finished = True
        self.streams.pop(s.sid, None)
        if s.chunks:  # answered before its body was read: what came is dropped, its credit given back
            self.consumed(s, sum(f for _, f in s.chunks))
            s.chunks.clear()
        self.listener.requests += 1
        if not self.streams:
            self.idle_since = self.listener.now
            if self.closing and not self.lost:
                self.flush_now()
                self.transport.close()

    # --- the listener's housekeeping
    def overdue(self, now: float) -> bool:
        """Reset each stream past its rt= (its body still not in) or wt= (its answer not written), as Go's
        HTTP/2 server does (RST_STREAM INTERNAL_ERROR); the connection and its other streams go on."""
        for s in [s for s in self.streams.values()
                  if (0.0 < s.read_by < now and not s.body_done) or 0.0 < s.write_by < now]:
            self.streams.pop(s.sid, None)
            s.gone = True
            s.wake()
            if s.task is not None and not s.finished:
                s.task.cancel()
            try:
                self.h2.reset_stream(s.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except h2.exceptions.ProtocolError:
                pass
            self.flush()
        return False

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY (no new streams); close once the open ones are answered.

        The GOAWAY frame is written by hand: h2's close_connection() moves the whole connection to CLOSED,
        after which every frame of the streams still open (their bodies, their answers) is a ProtocolError."""
        if self.closing:
            return
        self.closing = True
        if not self.lost:
            self.flush_now()
            self.transport.write(GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id).serialize())
            if not self.streams:
                self.transport.close()

    def idle(self, limit: float) -> bool:
        return not self.streams and self.idle_since < limit
