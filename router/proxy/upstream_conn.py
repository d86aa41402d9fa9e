"""One upstream TCP (or TLS) connection: reads with a chosen buffer size and parses responses with httptools.

The protocol side of the upstream client (router/proxy/upstream.py holds the pool and the exchange,
router/proxy/upstream_response.py the response the proxy reads): it fills the current Response, or
writes each read straight to the client while `Response.relay` runs (`_deliver`), pauses the socket when
nobody waits for what the response holds or the client is behind (HIGH_WATER, READ_AHEAD), bounds a
response head at MAX_HEAD and hands the connection back to the pool when the response is released whole.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from router.proxy.headers import HOP_BY_HOP_BYTES
from router.proxy.upstream_errors import Stale, UpstreamError
from router.proxy.upstream_response import Response

if TYPE_CHECKING:
    from router.proxy.upstream import Upstream

# Bytes of one response head (status line, headers, 1xx heads before it) we read before giving up: an
# upstream that never ends its head would otherwise be buffered until memory runs out (httptools sets no
# limit).  Go's Transport, fabio's, allows 10 MB; 1 MiB is ample for any real response (nginx: 4-8 KB).
MAX_HEAD = 1 << 20
# How much one upstream read may bring. What a read brings is held whole until the client takes it, so
# for a client that reads slowly it is the bound (one read on the client side, one read-ahead here: see
# HIGH_WATER). A read the consumer waits for starts at READ_MIN and doubles up to READ_MAX while the client
# keeps up (nothing left buffered when the next read comes). A trade-off measured on 200 MB downloads and
# slowhttptest -X (docs/datapath.md): 256 KiB reads cost less CPU per byte but let a slow reader hold far
# more; 16 KiB reads doubled the CPU of a download.
READ_MIN = 1 << 15
READ_MAX = 1 << 16
# A read of the body that nobody waits for yet (the consumer is writing to its client), and the first read
# after the client fell behind (Response.relay), which then doubles while the client keeps up: a slow reader
# so holds at most this much here, in the client's write buffer.
READ_AHEAD = 1 << 14
# A response's first read (its head, and all of a small answer) goes into one scratch buffer per pool and
# is copied out when it brought at most this much: a fresh zeroed 64 KiB buffer for every 19-byte answer
# was a fifth of the instructions per request (docs/datapath.md). A bigger first read takes the buffer
# with it, as a mid-body read does.
COPY_MAX = 1 << 14
_NOTED = HOP_BY_HOP_BYTES | {b"content-length"}  # response header names on_headers_complete looks at



class UpstreamConn(asyncio.BufferedProtocol):
    """One upstream TCP (or TLS) connection; parses responses with httptools.

    A BufferedProtocol to choose the read size (READ_MIN..READ_MAX): each read of a body gets a fresh buffer
    that is handed on as it is (one copy fewer than `data_received`'s bytes; less CPU per downloaded byte
    than uvicorn's path had in an A/B); the first read of an answer goes to the pool's scratch buffer
    (COPY_MAX)."""

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
        # relay(): a read's buffer that the client's transport took whole (nothing of it left there), filled
        # again by the next read of the same size instead of a fresh zeroed one; let go when the response ends
        self._spare: bytearray | None = None
        self._taken = False  # _deliver wrote the read under way straight to the client, all of it
        # the head being parsed (on_header): its Content-Length, chunked, and what the proxy forwards of it
        self.head_cl = -1
        self.head_chunked = False
        self.forward: list[tuple[bytes, bytes]] | None = []

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        resp = self.resp
        if resp is None or not resp._headers_fut.done():  # the first read of an answer (see COPY_MAX)
            self._buf = None
            view = self.pool._scratch
            return view if view is not None else self.pool._scratch_view()
        size = self.read_size
        w = resp._waiter
        if resp._sink is not None:  # relay(): the size grows in _deliver while the client takes each read
            pass
        elif w is not None and not w.done():  # the consumer waits for these bytes
            if size < READ_MAX and not resp._chunks:  # ... and took everything so far
                size = self.read_size = size * 2
        elif resp._ahead == 0:
            size = READ_AHEAD  # nobody waits for them: a read-ahead (see HIGH_WATER)
        buf = self._spare
        if buf is None or len(buf) != size:
            buf = bytearray(size)
        self._spare = None
        self._buf = buf
        # a memoryview, not the bytearray: asyncio's TLS layer fills a second TLS record into `buf[offset:]`,
        # which for a bytearray is a copy (the bytes were lost: a Consul answer over TLS read back as zeros)
        return memoryview(buf)

    def buffer_updated(self, nbytes: int) -> None:
        """The read landed in its own buffer, handed on without a copy (a memoryview when it is not full;
        the client transport, httptools and b"".join take either)."""
        buf = self._buf
        if buf is None:  # the pool's scratch buffer: copied out, or taken along when the read was big
            pool = self.pool
            view = pool._scratch
            if nbytes <= COPY_MAX:
                self.data_received(view[:nbytes].tobytes())  # type: ignore[index]
                return
            pool._scratch = None
            self.data_received(view[:nbytes])  # type: ignore[arg-type,index]
            return
        self._buf = None
        self._taken = False
        self.data_received(buf if nbytes == len(buf) else memoryview(buf)[:nbytes])  # type: ignore[arg-type,index]
        if self._taken and self.resp is not None:  # nothing holds `buf` now (see _spare)
            self._spare = buf

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: the connection is unusable
            self.reusable = False
            self.abort()
            return
        if resp._done:  # bytes after the whole answer: the connection is out of step
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
            w = resp._waiter  # resp._wake(), inline (as below): this runs for every answer
            if w is not None and not w.done():
                w.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        # The parser holds this protocol as its callbacks object: the pair was a reference cycle that only a
        # collection freed, one per closed upstream connection (tests/test_upstream_objects.py). No bytes
        # come after connection_lost, so nothing parses again.
        self.parser = None  # type: ignore[assignment]
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
        """Each header, for the Response (raw_headers) and, in the same call, for the framing and for what the
        proxy forwards (Response.forward: ForwardingHeaders.response_headers' rule, which a Connection header
        naming others is left to): a loop over the headers here and another in response_headers, each with
        a lower() per header, were a tenth of the bytecodes of a proxied request."""
        self.resp.raw_headers.append((name, value))  # type: ignore[union-attr]
        ln = name.lower()
        if ln in _NOTED:
            if ln == b"content-length":
                self.head_cl = int(value)  # one at most: llhttp refuses a second one
            elif ln == b"transfer-encoding":
                if b"chunked" in value.lower():
                    self.head_chunked = True
                return
            elif ln == b"connection" and value.lower() != b"keep-alive":
                self.forward = None  # it names headers to drop
                return
            else:  # another hop-by-hop header
                return
        forward = self.forward
        if forward is not None:
            forward.append((ln, value))

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        cl, chunked = self.head_cl, self.head_chunked
        self.head_cl, self.head_chunked = -1, False  # afresh for the next head
        if 100 <= status < 200 and status != 101:  # 100 Continue & co: the real answer follows
            resp.raw_headers = []
            self.forward = []
            return
        resp.status = status
        resp.forward = self.forward
        self.forward = []
        if resp._head or status in (204, 304):
            resp._done = True
        else:
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
        sink = resp._sink
        if sink is not None:  # relay(): straight to the client while it keeps up (upstream_response.HIGH_WATER)
            try:
                if sink.write_now(body):
                    self._taken = True
                    if self.read_size < READ_MAX:
                        self.read_size <<= 1
                    return
                resp._sink_stop = True
                self.behind()
            except Exception as e:  # noqa: BLE001 - the client's side failed (ClientGone): relay() raises it
                resp._sink_stop = e
            resp._sink = None
            if not self.paused_reading and self.transport is not None:
                self.paused_reading = True
                self.transport.pause_reading()
            resp._wake()
            return
        resp._chunks.append(body)
        resp._buffered += len(body)
        w = resp._waiter
        if (self.raw_left and resp._buffered > resp._ahead and (w is None or w.done()) and not self.paused_reading
                and self.transport is not None):  # nobody waits for these bytes: pause (see HIGH_WATER)
            # (raw_left 0: this completes a sized body, so no more is to come: a small answer, which arrives
            # whole, costs no pause and resume; a byte after it ends the connection, see data_received)
            self.paused_reading = True
            self.transport.pause_reading()
        if w is not None and not w.done():  # resp._wake()
            w.set_result(None)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or not resp._headers_fut.done():
            return  # end of a 1xx interim response
        if resp._head:  # the parser expected a body it will never get: start afresh for the next one
            self.parser = httptools.HttpResponseParser(self)
        self.raw_left = -1
        resp._done = True
        w = resp._waiter  # resp._wake()
        if w is not None and not w.done():
            w.set_result(None)

    # --- used by Response / Upstream
    def behind(self) -> None:
        """The client did not take the last write at once: the next read, which waits for it, is a small one."""
        self.read_size = READ_AHEAD

    def want_read(self) -> None:
        if self.paused_reading and self.transport is not None and not self.lost:
            self.paused_reading = False
            self.transport.resume_reading()

    def finished(self, resp: Response, reusable: bool) -> None:
        """`resp` is over (released or closed)."""
        # Its error was raised from its own frames (relay, __anext__): the traceback holds them and so `resp`,
        # a cycle only a collection freed, one per broken-off answer (tests/test_upstream_objects.py).
        resp._error = None
        if self.resp is not resp:
            return
        self.resp = None
        self._spare = None
        if reusable and self.reusable and not self.lost:
            if self.paused_reading:
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
