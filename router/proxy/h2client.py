"""An HTTP/2 client for gRPC upstreams (router/proxy/grpc.py): one connection per instance, its streams
multiplexed, libnghttp2 as the protocol engine (router/proxy/nghttp2.py), flow control honoured both ways:
the instance's bytes are acknowledged as the client takes them (`ack`), ours are queued per stream and
taken by nghttp2 as the instance's windows allow (`on_read`), a writer waiting while more than `HIGH` is
queued."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

from router.proxy import nghttp2 as ng

Headers = list[tuple[bytes, bytes]]
HIGH = 64 * 1024
MAX_HEAD = 1 << 20  # an instance's header list past this resets its stream (memory, not trust)
_lib = ng.lib


class UpstreamGone(Exception):
    """The instance reset the stream or closed the connection before the call ended."""


class UpStream:
    def __init__(self, conn: H2Client, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.head: asyncio.Future[tuple[int, Headers, bool]] = conn.loop.create_future()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.trailers: Headers | None = None
        self.done = False
        self.error: str = ""
        self.out = bytearray()  # request bytes nghttp2 has yet to take (H2Client.on_read)
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    async def write(self, data: bytes) -> None:
        c = self.conn
        if self.done or c.closed:
            raise UpstreamGone(self.error or "stream closed")
        self.out += data
        _lib.nghttp2_session_resume_data(c.ng.ptr, self.sid)
        c.flush()
        while len(self.out) >= HIGH:  # the instance's windows hold it: wait for on_read to take some
            self.waiter = c.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
            if self.done or c.closed:
                raise UpstreamGone(self.error or "stream closed")

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def end(self) -> None:
        if not self.done and not self.conn.closed and not self.eof:
            self.eof = True
            _lib.nghttp2_session_resume_data(self.conn.ng.ptr, self.sid)
            self.conn.flush()

    async def response(self) -> tuple[int, Headers, bool]:
        """(:status, the other headers, whether the stream ended with them)."""
        return await self.head

    async def data(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.queue.get()
            if data is None:
                if self.error:
                    raise UpstreamGone(self.error)
                return
            yield data
            self.conn.ack(self.sid, len(data))

    def cancel(self) -> None:
        c = self.conn
        if not self.done and not c.closed:
            _lib.nghttp2_submit_rst_stream(c.ng.ptr, 0, self.sid, ng.CANCEL)
            c.flush()
        c.streams.pop(self.sid, None)
        c.sending.pop(self.sid, None)
        self.done = True
        while not self.queue.empty():  # data that arrived but was never read still holds window credit
            data = self.queue.get_nowait()
            if data is not None:
                c.ack(self.sid, len(data))

    def fail(self, why: str) -> None:
        self.error = why
        self.done = True
        if not self.head.done():
            self.head.set_exception(UpstreamGone(why))
            self.head.exception()  # retrieved: a call that never asks for it (cancelled) leaves no warning
        self.queue.put_nowait(None)
        self.wake()


class H2Client(asyncio.Protocol):
    """One connection to an instance. nghttp2 calls the `on_*` methods from inside `data_received`
    (mem_recv) and `flush_now` (mem_send)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ng = ng.Session(server=False)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpStream] = {}
        self.sending: dict[int, UpStream] = {}  # streams whose request nghttp2 is still taking (on_read)
        self.closed = False
        self.draining = False  # the instance sent GOAWAY: no new streams here (open ones may finish)
        self.flush_pending = False
        self.cur: Headers = []
        self.cur_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ng.open(self)
        self.ng.settings({ng.SETTINGS_ENABLE_PUSH: 0})
        self.flush_now()

    def flush(self) -> None:
        """Write what nghttp2 queued once per event-loop turn: a call's HEADERS, DATA and END_STREAM (and
        those of the other calls started in the same turn) leave in one write, not one each (a syscall per
        write was a quarter of the router's time on gRPC unary calls: bench/tls_bench.py)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self.flush_pending = False
        if self.closed or self.transport is None:
            return
        data = self.ng.send()
        if data:
            self.transport.write(data)
        if not self.ng.alive():  # a GOAWAY (ours after an error, or the instance's) and nothing left open
            self._fail_all("the instance closed the connection (GOAWAY)")
            self.transport.close()

    def ack(self, sid: int, n: int) -> None:
        """Give `n` bytes of flow-control credit back. Also for a stream that has ended or was cancelled:
        the connection's window counts its bytes too (nghttp2 then updates only that one), and credit never
        returned starves every later call on the connection once 64 KiB of answers went unacknowledged."""
        if n and not self.closed:
            _lib.nghttp2_session_consume(self.ng.ptr, sid, n)
            self.flush()

    def usable(self) -> bool:
        return not (self.closed or self.draining) and len(self.streams) < _lib.nghttp2_session_get_remote_settings(
            self.ng.ptr, ng.SETTINGS_MAX_CONCURRENT_STREAMS)

    def open(self, headers: Headers) -> UpStream:
        arr, n, _keep = ng.nva([(n.lower(), v) for n, v in headers])
        sid = _lib.nghttp2_submit_request(self.ng.ptr, ng.NULL, arr, n, ng.PROVIDER, ng.NULL)
        if sid < 0:
            raise UpstreamGone(f"cannot open a stream: {ng.strerror(sid)}")
        st = self.streams[sid] = self.sending[sid] = UpStream(self, sid)
        self.flush()
        return st

    def data_received(self, data: bytes) -> None:
        n = self.ng.recv(data)
        if n < 0:
            self._fail_all(f"protocol error: {ng.strerror(n)}")
            if self.transport is not None:
                self.transport.close()
            return
        self.flush()

    # --- nghttp2's callbacks (router/proxy/nghttp2.py Engine)
    def on_begin_headers(self, sid: int) -> int:
        self.cur = []
        self.cur_size = 0
        return 0

    def on_header(self, name: bytes, value: bytes) -> int:
        self.cur_size += len(name) + len(value) + 32
        if self.cur_size > MAX_HEAD:
            return ng.ERR_TEMPORAL_CALLBACK_FAILURE  # the stream is reset (on_close fails the call)
        self.cur.append((name, value))
        return 0

    def on_frame(self, kind: int, flags: int, sid: int, frame: Any) -> int:
        st = self.streams.get(sid) if sid else None
        if kind == ng.HEADERS and st is not None:
            if frame.cat == ng.HCAT_RESPONSE:
                status, rest = 0, []
                for n, v in self.cur:
                    if n == b":status":
                        status = int(v)
                    elif n[:1] != b":":
                        rest.append((n, v))
                if status >= 200 and not st.head.done():
                    st.head.set_result((status, rest, bool(flags & ng.FLAG_END_STREAM)))
            else:
                st.trailers = self.cur
            if flags & ng.FLAG_END_STREAM:
                self._ended(st)
        elif kind == ng.DATA and st is not None and flags & ng.FLAG_END_STREAM:
            self._ended(st)
        elif kind == ng.GOAWAY:
            self.draining = True  # streams past its last stream id are closed by nghttp2 (on_close)
        return 0

    def _ended(self, st: UpStream) -> None:
        st.done = True
        self.streams.pop(st.sid, None)
        st.queue.put_nowait(None)

    def on_data(self, sid: int, data: bytes) -> int:
        st = self.streams.get(sid)
        if st is not None and not st.done:
            st.queue.put_nowait(data)
        else:  # nobody will read it (cancelled): the credit goes back now
            _lib.nghttp2_session_consume(self.ng.ptr, sid, len(data))
        return 0

    def on_close(self, sid: int, code: int) -> int:
        st = self.sending.pop(sid, None)
        if st is not None:
            st.wake()
        st = self.streams.pop(sid, None)
        if st is not None and not st.done:
            st.fail(f"the instance reset the stream (error code {code})" if code else "the stream closed")
        return 0

    def on_read(self, sid: int, buf: Any, length: int, flags: Any) -> int:
        """nghttp2 takes up to `length` bytes of stream `sid`'s request (the instance's windows allow it)."""
        st = self.sending.get(sid)
        if st is None:
            return ng.ERR_TEMPORAL_CALLBACK_FAILURE
        n = ng.feed(st, buf, length, HIGH)
        if st.eof and not st.out and n >= 0:  # the last of the request: END_STREAM
            flags[0] |= ng.DATA_FLAG_EOF
            del self.sending[sid]
        return n

    def _fail_all(self, why: str) -> None:
        self.closed = True
        for st in list(self.streams.values()):
            st.fail(why)
        for st in self.sending.values():
            st.wake()
        self.streams.clear()
        self.sending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed")
        self.ng.close()


def _retrieved(task: asyncio.Task) -> None:
    """A failed dial whose callers all left logs no 'exception never retrieved' (each caller saw it)."""
    if not task.cancelled():
        task.exception()


class H2Pool:
    """One live HTTP/2 connection per (host, port, tls, server name)."""

    def __init__(self, dial_timeout: float = 30.0) -> None:
        self.dial_timeout = dial_timeout or None
        self.conns: dict[tuple, H2Client] = {}
        self.dialing: dict[tuple, asyncio.Task[H2Client]] = {}

    async def _conn(self, host: str, port: int, tls: bool, servername: str, verify: bool) -> H2Client:
        key = (host, port, tls, servername, verify)
        c = self.conns.get(key)
        if c is not None and c.usable():
            return c
        dial = self.dialing.get(key)
        if dial is None:  # a task of its own: a caller cancelled (its client left) leaves it to the others
            dial = self.dialing[key] = asyncio.get_running_loop().create_task(self._dial(key))
            dial.add_done_callback(_retrieved)
        return await asyncio.shield(dial)

    async def _dial(self, key: tuple) -> H2Client:
        host, port, tls, servername, verify = key
        loop = asyncio.get_running_loop()
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
            return proto
        finally:
            self.dialing.pop(key, None)

    async def open_stream(self, host: str, port: int, tls: bool, servername: str, headers: Headers, *,
                          verify: bool = True) -> UpStream:
        c = await self._conn(host, port, tls, servername, verify)
        return c.open(headers)

    async def close(self) -> None:
        for dial in self.dialing.values():
            dial.cancel()
        for c in self.conns.values():
            if c.transport is not None:
                c.transport.close()
        self.conns.clear()
