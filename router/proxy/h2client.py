"""An HTTP/2 client for gRPC upstreams (router/proxy/grpc.py): one connection per instance, its streams
multiplexed, h2 (python-hyper) as the protocol engine, flow control honoured both ways."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

Headers = list[tuple[bytes, bytes]]


class UpstreamGone(Exception):
    """The instance reset the stream or closed the connection before the call ended."""


class UpStream:
    def __init__(self, conn: H2Client, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.head: asyncio.Future[tuple[int, Headers, bool]] = conn.loop.create_future()
        self.queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self.trailers: Headers | None = None
        self.done = False
        self.error: str = ""
        self.window: asyncio.Event = asyncio.Event()

    async def write(self, data: bytes) -> None:
        c = self.conn
        view = memoryview(data)
        while view:
            if self.done or c.closed:
                raise UpstreamGone(self.error or "stream closed")
            n = min(c.h2.local_flow_control_window(self.sid), c.h2.max_outbound_frame_size, len(view))
            if n <= 0:
                self.window.clear()
                c.flush()
                await self.window.wait()
                continue
            c.h2.send_data(self.sid, view[:n].tobytes())
            view = view[n:]
        c.flush()

    def end(self) -> None:
        if not self.done and not self.conn.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.h2.end_stream(self.sid)
                self.conn.flush()

    async def response(self) -> tuple[int, Headers, bool]:
        """(:status, the other headers, whether the stream ended with them)."""
        return await self.head

    async def data(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if item is None:
                if self.error:
                    raise UpstreamGone(self.error)
                return
            data, flen = item
            yield data
            self.conn.ack(self.sid, flen)

    def cancel(self) -> None:
        if not self.done and not self.conn.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.h2.reset_stream(self.sid, h2.errors.ErrorCodes.CANCEL)
                self.conn.flush()
        self.conn.streams.pop(self.sid, None)
        self.done = True
        while not self.queue.empty():  # data that arrived but was never read still holds window credit
            item = self.queue.get_nowait()
            if item is not None:
                self.conn.ack(self.sid, item[1])

    def fail(self, why: str) -> None:
        self.error = why
        self.done = True
        if not self.head.done():
            self.head.set_exception(UpstreamGone(why))
        self.queue.put_nowait(None)
        self.window.set()


class H2Client(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # What the instance sends is validated; what we send is the client's request (validated by the
        # listener's h2) with lower-cased names (open()), so h2's outbound checks per header are skipped
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpStream] = {}
        self.closed = False
        self.flush_pending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.flush_now()

    def flush(self) -> None:
        """Write what h2 queued once per event-loop turn: a call's HEADERS, DATA and END_STREAM (and those
        of the other calls started in the same turn) leave in one write, not one each (a syscall per
        write was a quarter of the router's time on gRPC unary calls: bench/tls_bench.py)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def ack(self, sid: int, n: int) -> None:
        """Give `n` bytes of flow-control credit back. Also for a stream that has ended or was cancelled:
        the connection's window counts its bytes too (h2 then updates only that one), and credit never
        returned starves every later call on the connection once 64 KiB of answers went unacknowledged."""
        if n and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(n, sid)
                self.flush()

    def open(self, headers: Headers) -> UpStream:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(n.lower(), v) for n, v in headers])
        st = self.streams[sid] = UpStream(self, sid)
        self.flush()
        return st

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.flush_now()
            self._fail_all(f"protocol error: {e}")
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and st is not None:
                status, rest = 0, []
                for n, v in ev.headers:
                    if n == b":status":
                        status = int(v)
                    elif n[:1] != b":":
                        rest.append((n, v))
                if not st.head.done():
                    st.head.set_result((status, rest, ev.stream_ended is not None))
            elif isinstance(ev, h2.events.DataReceived):
                if st is not None and not st.done:
                    st.queue.put_nowait((ev.data, ev.flow_controlled_length))
                else:  # nobody will read it (cancelled): the credit goes back now
                    self.ack(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.TrailersReceived) and st is not None:
                st.trailers = list(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                st.done = True
                self.streams.pop(st.sid, None)
                st.queue.put_nowait(None)
            elif isinstance(ev, h2.events.StreamReset) and st is not None:
                self.streams.pop(st.sid, None)
                st.fail(f"the instance reset the stream ({ev.error_code!r})")
            elif isinstance(ev, h2.events.WindowUpdated):
                for s in (self.streams.values() if ev.stream_id == 0 else [st] if st else []):
                    s.window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._fail_all("the instance closed the connection (GOAWAY)")
        self.flush()

    def _fail_all(self, why: str) -> None:
        self.closed = True
        for st in list(self.streams.values()):
            st.fail(why)
        self.streams.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed")


class H2Pool:
    """One live HTTP/2 connection per (host, port, tls, server name)."""

    def __init__(self, dial_timeout: float = 30.0) -> None:
        self.dial_timeout = dial_timeout or None
        self.conns: dict[tuple, H2Client] = {}
        self.dialing: dict[tuple, asyncio.Future[H2Client]] = {}

    async def _conn(self, host: str, port: int, tls: bool, servername: str, verify: bool) -> H2Client:
        key = (host, port, tls, servername, verify)
        c = self.conns.get(key)
        if c is not None and not c.closed and c.h2.open_outbound_streams < c.h2.remote_settings.max_concurrent_streams:
            return c
        fut = self.dialing.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = self.dialing[key] = loop.create_future()
        try:
            ctx = None
            if tls:
                ctx = ssl.create_default_context()
                ctx.set_alpn_protocols(["h2"])
                if not verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: H2Client(loop), host, port, ssl=ctx,
                                       server_hostname=servername if tls else None), self.dial_timeout)
            self.conns[key] = proto
            fut.set_result(proto)
            return proto
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: other waiters get it too
            raise
        finally:
            self.dialing.pop(key, None)

    async def open_stream(self, host: str, port: int, tls: bool, servername: str, headers: Headers, *,
                          verify: bool = True) -> UpStream:
        c = await self._conn(host, port, tls, servername, verify)
        return c.open(headers)

    async def close(self) -> None:
        for c in self.conns.values():
            if c.transport is not None:
                c.transport.close()
        self.conns.clear()
