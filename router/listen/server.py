"""The proxy's listener: sockets, the set of open connections, idle timeouts and graceful shutdown.

One :class:`Listener` serves the proxy core (router/proxy/handler.py) on one or more listening sockets
with a protocol class per connection (router/listen/http1.py today; a TLS or PROXY-protocol listener
passes its own factory to :meth:`Listener.add` and shares everything else). It keeps what uvicorn's
server did for the proxy, no more: connections closed after `idle_timeout` without a request (fabio's
`it=` listener option; the one timer per listener is swept every `tick`, not armed per request), fabio's
`rt=`/`wt=` per listening port (each connection keeps its deadlines; the same sweep drops those past
them), and a graceful stop: no new connections, idle ones closed, busy ones closed after their current
answer (gRPC calls: at most `grpc_grace` more), then the core's upstream pool closed and the access log
flushed.

Held (`held=True`): the sockets are bound at once (a port in use stops the start) but listened on only
when `open()` is called, once the router has its first routing table (router/run/gate.py). Until then the
kernel refuses connections, or, with SO_REUSEPORT, gives them to the processes that do listen: none
reaches a process that could only answer "routing table not loaded yet".

`serve()`, `should_exit` and `started` mirror `uvicorn.Server`'s surface, which router/run/ drives for
the UI server too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from router.listen.http1 import Http1

TICK = 1.0  # seconds between idle sweeps (shorter when idle_timeout is)


def listen_socket(addr: tuple[str, int], reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket, not yet listening (`Listener.add` listens, at once or at `open()`); `reuse_port`
    lets several worker processes share the address (the kernel spreads new connections over the ones
    that listen)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


class Listener:
    """Serves the proxy core on listening sockets (see the module docstring)."""

    def __init__(self, core: Any, *, idle_timeout: float = 75.0, max_head: int = 1 << 20,
                 tunnel: Callable[[], asyncio.Protocol] | None = None, addr: tuple[str, int] | None = None,
                 timeouts: tuple[float, float] = (0.0, 0.0), grpc_grace: float = 2.0, held: bool = False) -> None:
        self.core = core
        self.held = held  # sockets bound, not listened on until open() (see the module docstring)
        self._waiting: list[asyncio.AbstractServer] = []
        self.grpc_grace = grpc_grace  # proxy.grpcshutdowntimeout: open gRPC calls' time at a graceful stop
        self.idle_timeout = idle_timeout
        self.timeouts = timeouts  # (rt, wt) of the sockets serve() binds or is given
        self.deadlines: dict[int, tuple[float, float]] = {}  # local port -> (rt, wt): fabio's per-listener rt=/wt=
        self.timed: set[Any] = set()  # open connections with a read or write deadline, checked by the sweep
        self.max_head = max_head
        self.tunnel = tunnel  # WebSocket tunnel protocol class (router/proxy/websocket.py), None: no upgrades
        self.addr = addr
        self.conns: set[Any] = set()
        self.requests = 0
        self.now = time.monotonic()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.servers: list[asyncio.AbstractServer] = []
        self.started = False
        self._exit: asyncio.Event | None = None
        self._exit_now = False
        self._sweeper: asyncio.TimerHandle | None = None

    # --- building blocks
    async def add(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol] | None = None,
                  **server_kwargs: Any) -> asyncio.AbstractServer:
        """Serve on `sock` with `factory` (default: plain HTTP/1.1); extra keywords go to create_server
        (e.g. ssl=)."""
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_server(factory or (lambda: Http1(self)), sock=sock, backlog=2048,
                                               start_serving=False, **server_kwargs)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweep()
        if self.held:  # read after the await: open() may have run meanwhile
            self._waiting.append(server)
        else:
            await server.start_serving()  # listen(): from here on the kernel queues connections for us
        return server

    async def open(self) -> None:
        """Start listening on every socket added while held; later ones listen as they are added."""
        self.held = False
        waiting, self._waiting = self._waiting, []
        for server in waiting:
            if not self._exit_now:
                await server.start_serving()

    def set_timeouts(self, port: int, read_timeout: float, write_timeout: float) -> None:
        """fabio's `rt=`/`wt=` for the listener on local `port`, as Go's http.Server ReadTimeout/WriteTimeout:
        a request (head and body) must arrive within rt of its first byte (the first one within rt of the
        connection), and its answer be written within wt of the request's head; past either, the connection
        is dropped. Checked by the idle sweep, so a deadline holds to within a quarter of it."""
        if read_timeout > 0 or write_timeout > 0:
            self.deadlines[port] = (read_timeout, write_timeout)

    def _tick(self) -> float:
        least = min([self.idle_timeout, *(t for pair in self.deadlines.values() for t in pair if t > 0)])
        return min(TICK, max(least / 4, 0.05))

    def _sweep(self) -> None:
        now = self.now = time.monotonic()
        limit = now - self.idle_timeout
        for conn in [c for c in self.conns if c.idle(limit)]:
            conn.transport.close()
        if self.timed:
            for conn in [c for c in self.timed if c.overdue(now)]:
                conn.transport.abort()  # as a Go deadline: nothing more is read or written
        self._sweeper = self.loop.call_later(self._tick(), self._sweep)

    async def shutdown(self) -> None:
        """Graceful stop (see the module docstring); returns when every connection has closed."""
        for server in self.servers:
            server.close()
        for conn in list(self.conns):
            conn.shutdown()
        deadline = time.monotonic() + self.grpc_grace
        while self.conns:
            if time.monotonic() >= deadline:  # fabio: GracefulStop bounded by proxy.grpcshutdowntimeout, then Stop
                for conn in [c for c in self.conns if getattr(c, "grpc_calls", 0)]:
                    conn.transport.abort()
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            await server.wait_closed()
        await self.core.close()

    # --- uvicorn.Server's surface, as router/run/ uses it
    @property
    def should_exit(self) -> bool:
        return self._exit_now

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_now = value
        if value and self._exit is not None:
            self._exit.set()

    async def serve(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Listen (on `sockets`, or on `addr`), serve until `should_exit` is set, then stop gracefully."""
        self._exit = asyncio.Event()
        if self._exit_now:
            self._exit.set()
        if sockets is None:
            assert self.addr is not None
            sockets = [listen_socket(self.addr)]
        for sock in sockets:
            self.set_timeouts(sock.getsockname()[1], *self.timeouts)
            await self.add(sock)
        self.started = True
        await self._exit.wait()
        await self.shutdown()
