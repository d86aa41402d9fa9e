"""TCP listeners: `proto=tcp` (route by the listener's port), `tcp+sni` (route by the TLS server name,
without terminating TLS) and `tcp-dynamic` (a listener per `:port` TCP route, opened and closed as the
table changes).

Routes are fabio's: `urlprefix-:3306 proto=tcp` is the table host `:3306`, looked up exactly as fabio's
`LookupHost` does (the host's routes, prefix-matched against "/"); `urlprefix-db.example.com/ proto=tcp`
on a tcp+sni listener is found by the ClientHello's server name. The route options `allow=`/`deny=` check
the client's address (the PROXY header's, if the listener reads one); `pxyproto=true` on the route
writes a PROXY v1 header to the upstream before the client's bytes. Byte counters per target
(`rx`: bytes from the upstream, `tx`: bytes to it, as fabio counts them) and connection counters per
listener kind feed /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.listen import clienthello, kernelsplice, proxyproto
from router.listen.accept import Closed, peek
from router.listen.splice import Side, watchdog

log = logging.getLogger("router.tcp")

SNI_WAIT = 5.0  # seconds a tcp+sni client gets to send its whole ClientHello


@dataclass
class TCPCounters:
    """fabio's tcp.* / tcp_sni.* counters and route.rx/route.tx, kept per process."""

    conn: dict[str, int] = field(default_factory=dict)  # kind ("tcp", "tcp_sni") -> connections
    connfail: dict[str, int] = field(default_factory=dict)
    noroute: dict[str, int] = field(default_factory=dict)
    denied: dict[str, int] = field(default_factory=dict)
    rx: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (service, route, target) -> bytes
    tx: dict[tuple[str, str, str], int] = field(default_factory=dict)
    open: int = 0

    def bump(self, what: dict[str, int], kind: str) -> None:
        what[kind] = what.get(kind, 0) + 1


def lookup_host(table, host: str):  # type: ignore[no-untyped-def]
    """fabio's Table.LookupHost: the routes of exactly this host, the first whose path prefixes "/"."""
    if table is None:
        return None
    return table.lookup_host(host)


class TCPProxy:
    """The connection handler of tcp, tcp+sni and tcp-dynamic listeners (router/listen/accept.py calls it)."""

    def __init__(self, kind: str, table: Callable[[], object], *, strategy: str = "rnd", dial_timeout: float = 30.0,
                 counters: TCPCounters | None = None, tls: ssl.SSLContext | None = None,
                 read_timeout: float = 0.0, write_timeout: float = 0.0) -> None:
        assert kind in ("tcp", "tcp+sni", "tcp-dynamic")
        self.kind = kind
        self.metric = "tcp_sni" if kind == "tcp+sni" else "tcp"
        self.table = table
        self.strategy = strategy
        self.dial_timeout = dial_timeout or None
        self.counters = counters or TCPCounters()
        self.tls = tls  # proto=tcp with cs=: TLS is terminated here and the plain stream spliced
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout

    async def route_for(self, sock: socket.socket, local: tuple[str, int]):  # type: ignore[no-untyped-def]
        """(route, host looked up) for this connection, or (None, host)."""
        table = self.table()
        if self.kind == "tcp+sni":
            data = await peek(sock, clienthello.MAX_HELLO, time.monotonic() + SNI_WAIT,
                              lambda d: clienthello.server_name(d) is not None)
            name = clienthello.server_name(data)  # raises NotClientHello
            if not name:
                raise clienthello.NotClientHello("no server name in the ClientHello" if name == "" else
                                                 "ClientHello incomplete")
            return lookup_host(table, name), name
        host = f":{local[1]}"
        if self.kind == "tcp-dynamic":
            r = lookup_host(table, f"{local[0]}:{local[1]}")
            if r is not None:
                return r, f"{local[0]}:{local[1]}"
        return lookup_host(table, host), host

    async def __call__(self, sock: socket.socket, client: tuple[str, int], local: tuple[str, int]) -> None:
        c = self.counters
        c.bump(c.conn, self.metric)
        try:
            route, host = await self.route_for(sock, local)
        except (clienthello.NotClientHello, Closed) as e:
            c.bump(c.connfail, self.metric)
            log.debug("%s: %s: %s", self.kind, client[0], e)
            sock.close()
            return
        target = route.pick(self.strategy) if route is not None else None
        if target is None:
            c.bump(c.noroute, self.metric)
            log.warning("%s: no route for %s", self.kind, host)
            sock.close()
            return
        if not self._permitted(target, client[0]):
            c.bump(c.denied, self.metric)
            log.info("%s: %s: access denied to %s", self.kind, client[0], host)
            sock.close()
            return
        key = (target.service, route.host + route.path, target.url)
        await self._splice(sock, client, local, target, key)

    @staticmethod
    def _permitted(target, ip: str) -> bool:  # type: ignore[no-untyped-def]
        from router.table.access import rules_for  # the route layer's rules, parsed once per option text

        rules = rules_for(target.opts)
        return rules is None or rules.permits([ip])

    async def _dial(self, target) -> socket.socket:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        last: OSError = OSError(f"{target.host} does not resolve")
        for family, kind, proto, _, addr in infos:
            s = socket.socket(family, kind, proto)
            s.setblocking(False)
            try:
                await loop.sock_connect(s, addr)
            except OSError as e:
                s.close()
                last = e
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        raise last

    async def _kernel_splice(self, sock, client, local, target, count_rx, count_tx) -> None:  # type: ignore[no-untyped-def]
        """Plain on both sides: bytes move in the kernel (router/listen/kernelsplice.py)."""
        c = self.counters
        try:
            up = await asyncio.wait_for(self._dial(target), self.dial_timeout)
        except (OSError, TimeoutError) as e:
            c.bump(c.connfail, self.metric)
            log.warning("%s: cannot connect to upstream %s:%s: %s", self.kind, target.host, target.port, e)
            sock.close()
            return
        if target.opts.get("pxyproto", "").lower() == "true":
            await asyncio.get_running_loop().sock_sendall(up, proxyproto.v1_header(client, local))
        c.open += 1
        try:
            await kernelsplice.splice(sock, up, count_tx=count_tx, count_rx=count_rx,
                                      read_timeout=self.read_timeout, write_timeout=self.write_timeout)
        finally:
            c.open -= 1

    async def _splice(self, sock, client, local, target, key) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        c = self.counters
        rx, tx = c.rx, c.tx
        rx.setdefault(key, 0)
        tx.setdefault(key, 0)

        def count_rx(n: int) -> None:
            rx[key] += n

        def count_tx(n: int) -> None:
            tx[key] += n

        if self.tls is None:
            await self._kernel_splice(sock, client, local, target, count_rx, count_tx)
            return
        up = Side(count_rx)
        down = Side(count_tx)
        up.peer, down.peer = down, up
        try:
            await asyncio.wait_for(loop.create_connection(lambda: up, target.host, target.port), self.dial_timeout)
        except (OSError, TimeoutError) as e:
            c.bump(c.connfail, self.metric)
            log.warning("%s: cannot connect to upstream %s:%s: %s", self.kind, target.host, target.port, e)
            sock.close()
            return
        if target.opts.get("pxyproto", "").lower() == "true":
            up.transport.write(proxyproto.v1_header(client, local))  # type: ignore[union-attr]
        try:
            await loop.connect_accepted_socket(lambda: down, sock, ssl=self.tls,
                                               ssl_handshake_timeout=10.0 if self.tls else None)
        except (OSError, ssl.SSLError, TimeoutError) as e:
            log.info("%s: %s: TLS handshake failed: %s", self.kind, client[0], e)
            up.close()
            sock.close()
            return
        down.attach(up)
        watchdog(down, self.read_timeout, self.write_timeout)
        c.open += 1
        try:
            await asyncio.gather(up.done, down.done)  # type: ignore[arg-type]
        finally:
            c.open -= 1
            up.close()
            down.close()
