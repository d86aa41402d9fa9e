"""Accepting connections on a listener and looking at their first bytes before anyone reads them.

The PROXY protocol header and the TLS ClientHello arrive before the bytes a protocol handler reads, and
whoever reads them first must not take more than they are: the PROXY header is consumed exactly (the
TLS handshake or the HTTP request after it stays in the kernel's buffer), the ClientHello only peeked at
(a tcp+sni splice passes it on untouched, an https+tcp+sni listener may still terminate TLS on it). So
the first bytes are read with MSG_PEEK, polled every few milliseconds while incomplete (a socket with
unread data stays readable, so waiting for readability would spin), within a bounded time; then the
socket is handed to a protocol (asyncio's `connect_accepted_socket`, with TLS when the listener has it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from router.listen import proxyproto

log = logging.getLogger("router.listen")

POLL = 0.005  # seconds between peeks at an incomplete header


class Closed(Exception):
    """The client closed (or reset) the connection before its first bytes were complete."""


async def peek(sock: socket.socket, n: int, deadline: float, enough: Callable[[bytes], bool]) -> bytes:
    """Up to `n` unread bytes of `sock`, once `enough(data)` says they suffice or the deadline passes."""
    loop = asyncio.get_running_loop()
    data = b""
    while True:
        try:
            data = sock.recv(n, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = data  # nothing new yet
        except OSError as e:
            raise Closed(str(e)) from None
        else:
            if not data:
                raise Closed("closed by the client")
            if enough(data):
                return data
        now = time.monotonic()
        if now >= deadline:
            return data
        if not data:  # nothing at all yet: wait for readability instead of polling
            fut = loop.create_future()
            loop.add_reader(sock.fileno(), lambda f=fut: f.done() or f.set_result(None))
            try:
                await asyncio.wait_for(fut, deadline - now)
            except TimeoutError:
                return b""
            finally:
                loop.remove_reader(sock.fileno())
        else:
            await asyncio.sleep(POLL)


async def read_proxy_header(sock: socket.socket, timeout: float) -> proxyproto.ProxyHeader | None:
    """The PROXY header at the start of `sock`, consumed; None if the connection does not start with one
    (or sends nothing within `timeout`). Raises ProxyHeaderError for a bad or unfinished header."""
    deadline = time.monotonic() + timeout

    def complete(data: bytes) -> bool:
        return proxyproto.parse(data) is not None  # a header, NOT_PROXY, or raises

    try:
        data = await peek(sock, proxyproto.V2_MAX, deadline, complete)
    except proxyproto.ProxyHeaderError:
        raise
    if not data:
        return None  # silent within pxytimeout: a server-speaks-first protocol (fabio: served directly)
    got = proxyproto.parse(data)
    if got is None:
        raise proxyproto.ProxyHeaderError(f"incomplete PROXY header after {timeout:g}s ({len(data)} bytes)")
    if got == proxyproto.NOT_PROXY:
        return None
    assert isinstance(got, proxyproto.ProxyHeader)
    consumed = b""
    while len(consumed) < got.length:  # exactly the header: the next protocol's bytes stay unread
        try:
            chunk = sock.recv(got.length - len(consumed))
        except BlockingIOError:
            await asyncio.sleep(POLL)
            continue
        if not chunk:
            raise Closed("closed inside the PROXY header")
        consumed += chunk
    return got


Handler = Callable[[socket.socket, tuple[str, int], tuple[str, int]], Awaitable[None]]


class Acceptor:
    """Accepts on one listening socket and runs `handler(sock, client, local)` per connection, after
    the PROXY header when `proxy_timeout` > 0 (client/local then come from the header)."""

    def __init__(self, sock: socket.socket, handler: Handler, *, proxy_timeout: float = 0.0,
                 name: str = "") -> None:
        self.sock = sock
        self.handler = handler
        self.proxy_timeout = proxy_timeout
        self.name = name or "{}:{}".format(*sock.getsockname()[:2])
        self.tasks: set[asyncio.Task] = set()
        self.refused = 0  # connections closed for a bad PROXY header
        self._closing = False

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while not self._closing:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as e:
                if self._closing:
                    return
                log.warning("listener %s: accept failed: %s", self.name, e)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = loop.create_task(self._one(conn, addr))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _one(self, conn: socket.socket, addr: tuple) -> None:
        client = (addr[0], addr[1])
        local = conn.getsockname()[:2]
        try:
            if self.proxy_timeout > 0:
                try:
                    hdr = await read_proxy_header(conn, self.proxy_timeout)
                except (proxyproto.ProxyHeaderError, Closed) as e:
                    self.refused += 1
                    log.info("listener %s: %s: connection closed: %s", self.name, client[0], e)
                    conn.close()
                    return
                if hdr is not None and hdr.src is not None:
                    client = hdr.src  # the listener's own address still routes (proto=tcp: its port)
            await self.handler(conn, client, local)
        except Exception:
            log.exception("listener %s: connection from %s failed", self.name, client[0])
            conn.close()

    def close(self) -> None:
        self._closing = True
        self.sock.close()

    async def wait_closed(self, grace: float = 0.0) -> None:
        if self.tasks and grace > 0:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for t in list(self.tasks):
            t.cancel()
