"""HTTP/1.1 on one client connection: our own asyncio protocol on httptools (llhttp).

Why our own and not uvicorn's: the edge (TLS with per-SNI certificates, the PROXY protocol, HTTP/2, TCP)
needs control of each connection, and every request paid for an ASGI scope and message passing plus
three mixins over uvicorn's private classes (docs/datapath.md). Here each parsed request goes straight
to the proxy core as a request record and an :class:`Http1Exchange` (the interface in
router/proxy/exchange.py); nothing else runs per request.

What one connection does, and why:

* **Framing as before.** llhttp parses (strict, with only uvicorn's `lenient_data_after_close`); its
  refusal is answered `400 bad request: <llhttp's reason>` and the connection closed, so bytes behind a
  request we do not trust are never read as another request. Targets that are not origin-form are marked
  for the request guard (router/proxy/request_guard.py); one without a path is refused here.
* **Pipelining in order.** A request parsed while another is answered waits in a queue and reading
  pauses; a parse error behind valid requests is answered after them (fabio does the same), not instead.
* **Head size.** `max_head` bytes of request line and fields (`proxy.maxheaderbytes`) are counted as the
  parser reports them; beyond it the answer is 431 and the connection closes. A head that never ends is
  cut at that size plus one read, since llhttp itself sets no limit.
* **Bodies without copies.** Once a Content-Length head is parsed the body bypasses llhttp (its
  `on_body` copies every chunk): the socket's chunks are queued as they are; a fresh parser takes over
  after the body. Reading pauses at `BODY_HIGH` buffered request bytes.
* **Flow control downstream.** The transport's write buffer limits are `WRITE_HIGH`/`WRITE_LOW` (0):
  an upstream answer is relayed from the upstream connection's read callbacks (`Http1Exchange.write_now`,
  router/proxy/upstream_response.py `relay`) while the kernel takes each write whole; when it does not,
  the upstream socket pauses until this transport's buffer is empty, so a client that reads slowly costs
  one read (16 KiB once it fell behind), not the whole answer; a peer with a tiny TCP window also gets a
  small kernel send buffer (router/listen/slowread.py).
* **One write for a small answer.** The head is held until the first body bytes or the end.
* **Expect: 100-continue** is answered when the core first reads the body; an answer sent without ever
  reading it closes the connection (the client may still be sending it).
* **HTTP/1.0, HEAD, 204, 304**: no chunked framing for an HTTP/1.0 client (the body is delimited by the
  close), none at all where a response has no body.
* **WebSocket**: an `Upgrade: websocket` request is handed, with the transport, to the tunnel protocol
  (router/proxy/websocket.py) once the requests before it are answered. Other upgrades (h2c) are served
  as plain requests and the connection closes after.

One request's body and answer framing are router/listen/http1_exchange.py. This module stays a little
over 400 lines: it is one connection's state machine (parser callbacks, the pipeline queue, reading
flow control, the endings), whose parts each read the others' state.

TLS and the PROXY protocol wrap this class rather than copy it: give the constructor the `client`
address the PROXY header named; `scheme` is "https" whenever the transport has an SSL context.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from router.listen.flow import GONE, WriteFlow
from router.listen.http1_exchange import BODY_HIGH, STATUS_LINE, WRITE_HIGH, WRITE_LOW, Http1Exchange
from router.proxy.exchange import ClientGone, Headers
from router.proxy.request_guard import NON_ORIGIN_TARGET

if TYPE_CHECKING:
    from router.listen.server import Listener

log = logging.getLogger("router.listen")

READ_SLACK = 256 * 1024  # a head still unfinished past max_head plus this is cut (one read or so)


class _Park(list):  # type: ignore[type-arg]
    """Awaited by the serving coroutine between requests: it yields itself to `Http1._step`, which then
    leaves the coroutine until `_begin` has a request for it. A list holding itself whose `__await__` is
    list's `__iter__`: the await yields its one item without a Python call (a generator per request
    otherwise)."""

    __slots__ = ()
    __await__ = list.__iter__


PARK = _Park()
PARK.append(PARK)


def _error_response(status: int, text: str) -> bytes:
    body = text.encode("ascii", "replace")
    return (STATUS_LINE[status] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body) + body)


class Http1(WriteFlow, asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (and 1.0) to the proxy core."""

    # Slots: past 30 attributes an instance's attributes no longer share their keys, and every attribute
    # read and write per request took the slower way of a plain dict (CPython 3.11; docs/datapath.md).
    __slots__ = ("listener", "core", "loop", "max_head", "transport", "client", "server", "scheme", "parser", "lost",
                 "closing", "reading_paused", "write_paused", "window_checked", "drain_waiter", "queue", "active",
                 "receiving", "serving", "parked", "kick", "idle_since", "error", "upgrade", "upgrading", "reason",
                 "in_head", "head_seen", "url", "headers", "head_bytes", "length", "te", "expect", "raw_left", "rt",
                 "wt", "read_by", "write_by", "__weakref__")

    def __init__(self, listener: Listener, client: tuple[str, int] | None = None) -> None:
        self.listener = listener
        self.core = listener.core
        self.loop = listener.loop
        self.max_head = listener.max_head
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client = client
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.parser = self._new_parser()
        self.lost = False
        self.closing = False  # answer what is in flight, then close (shutdown, EOF)
        self.reading_paused = False
        self.write_paused = False
        self.window_checked = False  # the peer's TCP window was looked at (router/listen/slowread.py)
        self.drain_waiter: asyncio.Future[None] | None = None
        self.queue: collections.deque[Http1Exchange] = collections.deque()  # pipelined, waiting their turn
        self.active: Http1Exchange | None = None  # being answered
        self.receiving: Http1Exchange | None = None  # whose body is being read
        # serves the connection's requests one after another, driven by _step (not a Task: see _begin)
        self.serving: Coroutine[Any, Any, None] | None = None
        self.parked = False  # it waits for the next request (at `await PARK`)
        self.kick = False  # a request arrived for it: _step once the parser has returned (data_received)
        self.idle_since = listener.now
        self.error = ""  # a 400 to send once the requests before it are answered
        self.upgrade: bytes | None = None  # a WebSocket request head (and what followed) to hand over
        self.upgrading = False
        self.reason = ""  # why we made the parser fail (a callback raised)
        # the head being parsed
        self.in_head = False
        self.head_seen = 0
        self.url = b""
        self.headers: Headers = []
        self.head_bytes = 0
        self.length = -1
        self.te = False
        self.expect = False
        self.raw_left = 0  # Content-Length body bytes still to come (they bypass the parser)
        # fabio's rt=/wt= (router/listen/server.py set_timeouts): monotonic deadlines, 0 = none
        self.rt = self.wt = self.read_by = self.write_by = 0.0

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        try:  # as uvicorn: the first of pipelined requests is answered even after a Connection: close
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # older httptools
            pass
        return parser

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)  # type: ignore[attr-defined]
        if self.client is None:
            peer = transport.get_extra_info("peername")
            self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("sockname")
        self.server = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self.listener.conns.add(self)
        if self.listener.deadlines and self.server is not None and self.server[1] in self.listener.deadlines:
            self.rt, self.wt = self.listener.deadlines[self.server[1]]
            self.listener.timed.add(self)
            if self.rt:
                self.read_by = time.monotonic() + self.rt

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.listener.conns.discard(self)
        self.listener.timed.discard(self)
        if self.parked:
            self._step()  # the serving coroutine sees `lost` and ends
        for ex in (self.active, self.receiving, *self.queue):
            if ex is not None:
                ex.gone = True
                ex.wake()
        self.queue.clear()
        self.resume_writing()
        self.transport = GONE  # type: ignore[assignment]  # why: router/listen/flow.py
        # The parser holds us as its callbacks object: without this the pair is a cycle that only a collection
        # frees (tests/test_http1_objects.py). No callback reads it after connection_lost.
        self.parser = None  # type: ignore[assignment]

    def eof_received(self) -> bool | None:
        if self.active is not None or self.queue:
            self.closing = True  # the client half-closed after its request: still answer it
            return True
        return None

    def data_received(self, data: bytes) -> None:
        left = self.raw_left
        if left > 0:
            self._raw_body(data, left)
            return
        if self.in_head:
            self.head_seen += len(data)
            if self.head_seen > self.max_head + READ_SLACK:
                self._fail(431, "request header fields too large\n")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:] if e.args else b"")
        except httptools.HttpParserError as e:
            self._parse_error(self.reason or str(e))
        if self.kick:  # a request to serve: now, in this callback, and outside the parser's
            self.kick = False
            self._step()

    def _raw_body(self, data: bytes, left: int) -> None:
        if len(data) > left:  # the body ends inside this read; the rest is the next (pipelined) request
            body, rest = data[:left], data[left:]
        else:
            body, rest = data, b""
        self.raw_left = left - len(body)
        rx = self.receiving
        if rx is not None:
            rx.deliver(body)
        if self.raw_left == 0:
            self.parser = self._new_parser()  # the old one still waits for the body it never saw
            self.on_message_complete()
            if rest:
                self.data_received(rest)

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        if self.rt:
            self.read_by = time.monotonic() + self.rt
        self.in_head = True
        self.head_seen = 0
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.length = -1
        self.te = False
        self.expect = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        if name == b"content-length":
            try:
                self.length = int(value)  # llhttp accepted the head: one valid length, no transfer-encoding
            except ValueError:
                self.length = -1
        elif name == b"transfer-encoding":
            self.te = True
        elif name == b"expect":
            self.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        url = self.url
        marked = False
        if url[:1] == b"/" and url.find(b"#") < 0:  # find(): see http1_exchange.start
            raw_path, _, query = url.partition(b"?")
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                parsed = None
            if parsed is None or parsed.path is None:  # authority-form (CONNECT), or absolute-form without a path
                self.reason = "request target has no path"
                raise ValueError(self.reason)  # llhttp turns this into a parse error: a 400 with this reason
            raw_path, query = parsed.path, parsed.query or b""
            marked = url[:1] != b"/" and url != b"*"
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        scope = {"type": "http", "method": method, "http_version": version, "path": path, "raw_path": raw_path,
                 "query_string": query, "headers": self.headers, "client": self.client, "server": self.server,
                 "scheme": self.scheme}
        if marked:
            scope[NON_ORIGIN_TARGET] = url
        ex = Http1Exchange(self, scope, version == "1.1" and parser.should_keep_alive(), method == "HEAD")
        head_bytes = self.head_bytes + len(raw_path) + len(query)
        if head_bytes > self.max_head:
            ex.reject = 431
        elif parser.should_upgrade():
            if self._is_websocket():
                self.upgrading = True
                out = [parser.get_method(), b" ", url, b" HTTP/1.1\r\n"]
                for name, value in self.headers:
                    out += (name, b": ", value, b"\r\n")
                out.append(b"\r\n")
                self.upgrade = b"".join(out)
                return
            ex.keep_alive = False  # h2c & co: served as a plain request; the parser cannot go on after it
        length = self.length
        if length > 0 or self.te:
            ex.body_done = False
            ex.expect = self.expect
            self.receiving = ex
            if length > 0 and not self.te:
                self.raw_left = length  # on_body counts down what came with the head
        if self.active is None and not self.queue:
            self._begin(ex)
        else:
            self.queue.append(ex)
            self.pause()

    def _is_websocket(self) -> bool:
        upgrade = False
        connection = False
        for name, value in self.headers:
            if name == b"upgrade":
                upgrade = value.strip().lower() == b"websocket"
            elif name == b"connection":
                connection = b"upgrade" in value.lower()
        return upgrade and connection and self.listener.tunnel is not None

    def on_body(self, body: bytes) -> None:
        if self.raw_left > 0:
            self.raw_left -= len(body)
        rx = self.receiving
        if rx is not None:
            rx.deliver(body)

    def on_message_complete(self) -> None:
        self.raw_left = 0
        self.read_by = 0.0
        rx = self.receiving
        if rx is not None:
            self.receiving = None
            rx.body_done = True
            rx.wake()

    # --- requests
    def _begin(self, ex: Http1Exchange) -> None:
        """Make `ex` the request being answered. One coroutine per connection serves them in turn (a task per
        request cost its creation and a weak-set entry each time, ~2 % of a worker in a profile), and it is
        driven by `_step`, not by a Task: a Task waiting between requests cost a future per request and a
        pass of the event loop before the request could start (docs/datapath.md, "Fourth pass"). Called from
        the parser (on_headers_complete, in data_received: the step follows when the parser returned) or from
        the serving coroutine itself (`finish`, a pipelined request: its loop takes it next)."""
        self.active = ex
        if self.wt:
            self.write_by = time.monotonic() + self.wt
        if self.parked or self.serving is None:
            self.kick = True

    def _step(self, _waited: object = None) -> None:
        """Run the serving coroutine to its next wait, as a Task's step does: a future it awaits calls this
        back when done (its result or exception is raised at the await), a bare yield goes on at the next
        pass, PARK waits for `_begin`. Not a Task, so nothing of the request path may need a current task
        (asyncio.timeout, uncancel: router/proxy/exchange.py client_left copes)."""
        self.parked = False
        coro = self.serving
        if coro is None:
            coro = self.serving = self._serve()
        try:
            waited = coro.send(None)
        except StopIteration:
            self.serving = None
            return
        except BaseException as e:  # _serve answers Exceptions itself: a cancellation or an exit
            self.serving = None
            if not self.lost:
                self.transport.close()
            if not isinstance(e, asyncio.CancelledError):
                raise
            return
        if waited is PARK:
            self.parked = True
        elif waited is None:  # asyncio.sleep(0)
            self.loop.call_soon(self._step)
        else:  # an asyncio future, awaited
            waited._asyncio_future_blocking = False  # type: ignore[attr-defined]
            waited.add_done_callback(self._step)  # type: ignore[attr-defined]

    async def _serve(self) -> None:
        """Serve the connection's requests in turn. Each request's handling is inline here, not a coroutine
        of its own: every level a task's await passes through costs on each suspend and resume."""
        core = self.core
        while not self.lost:
            ex = self.active
            if ex is None:
                await PARK
                continue
            if ex.broken:
                self._send_error()
            else:
                try:
                    if ex.reject:
                        await ex.respond(ex.reject, [(b"content-type", b"text/plain; charset=utf-8"),
                                                     (b"content-length", b"32"), (b"connection", b"close")],
                                         b"request header fields too large\n")
                    else:
                        await core.serve(ex.scope, ex)
                except ClientGone:
                    pass
                except Exception:
                    log.exception("%s %s: the proxy failed", ex.scope["method"], ex.scope["path"])
                    if not ex.sent and not self.lost:
                        self.transport.write(_error_response(500, "internal error\n"))
                    self.closing = True
                if not ex.finished:  # the core gave up (the client left, its body broke, an exception)
                    if self.error and ex.broken:
                        self._send_error()
                    elif not self.lost:
                        self.transport.close()
            if self.active is ex:  # not finished (the client left, an error): it closed the connection
                self.active = None

    def finish(self, ex: Http1Exchange) -> None:
        """The answer to `ex` is written: close, or go on with the next request."""
        ex.finished = True
        self.active = None
        self.write_by = 0.0
        self.listener.requests += 1
        if self.lost:
            return
        if not ex.keep_alive or self.closing or (ex.expect and not ex.body_done):
            self.transport.close()  # after what is buffered has been written
            return
        if not ex.body_done:  # answered before the body ended: the rest is read and dropped
            ex.chunks.clear()
            ex.buffered = 0
        if self.queue:
            self._begin(self.queue.popleft())
        elif self.error:
            self._send_error()
            return
        elif self.upgrade is not None:
            self._hand_over(b"")
            return
        else:
            self.idle_since = self.listener.now
        if self.reading_paused:
            self.maybe_resume()

    # --- reading
    def pause(self) -> None:
        if not self.reading_paused and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()

    def maybe_resume(self) -> None:
        rx = self.receiving
        if (self.queue or self.error or self.upgrade is not None or self.lost
                or (rx is not None and rx.buffered > BODY_HIGH)):
            return
        self.reading_paused = False
        self.transport.resume_reading()

    # --- endings
    def _parse_error(self, reason: str) -> None:
        self.error = f"bad request: {reason}\n"
        self.pause()
        rx = self.receiving
        if rx is not None:
            rx.gone = rx.broken = True  # its framing is not to be trusted: never forwarded if not yet started
            rx.wake()
            self.receiving = None
        if self.active is None and not self.queue:
            self._send_error()

    def _send_error(self) -> None:
        if not self.lost:
            self.transport.write(_error_response(400, self.error or "bad request\n"))
            self.transport.close()
        self.closing = True

    def _fail(self, status: int, text: str) -> None:
        """Refuse what is being read now, at once (a head past every limit)."""
        if not self.lost:
            self.transport.write(_error_response(status, text))
            self.transport.close()
        self.closing = True

    def _upgraded(self, rest: bytes) -> None:
        if self.upgrade is None:  # an upgrade we do not tunnel: answer the request, then close
            self.closing = True
            self.pause()
            return
        self.upgrade += rest
        if self.active is None and not self.queue:
            self._hand_over(b"")
        else:
            self.pause()

    def _hand_over(self, more: bytes) -> None:
        """Give the transport to a WebSocket tunnel (router/proxy/websocket.py), head and all."""
        head, self.upgrade = (self.upgrade or b"") + more, None
        tunnel = self.listener.tunnel()  # type: ignore[misc]
        self.listener.conns.discard(self)
        self.listener.timed.discard(self)  # a WebSocket tunnel has no request deadlines
        self.transport.set_protocol(tunnel)
        tunnel.connection_made(self.transport)
        tunnel.data_received(head)
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """Graceful stop: an idle connection closes now, a busy one after its current answer."""
        if self.active is None and not self.queue:
            self.transport.close()
        else:
            self.closing = True

    def overdue(self, now: float) -> bool:
        """Past its rt= (the request still not read) or wt= (its answer still not written)."""
        return 0.0 < self.read_by < now or 0.0 < self.write_by < now

    def idle(self, limit: float) -> bool:
        return self.active is None and not self.queue and self.upgrade is None and self.idle_since < limit
