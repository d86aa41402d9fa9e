"""The listeners of `proxy.addr` beyond the plain HTTP one: which of them this router serves, and
serving them (TCP, tcp+sni and tcp-dynamic, with TLS and its certificate sources where a `cs=` asks).

Every listener fabio accepts is parsed (router/config/listeners.py); one whose protocol is not served
yet stops startup here, naming it, rather than listening and answering with the wrong protocol. TCP
listeners run in the main process, or with `proxy.workers` > 1 in every worker (SO_REUSEPORT), whose
counters the main process sums (router/run/edgestats.py). With `held`, their sockets are bound at start
and listened on only at `open()`, once the process has its first routing table (router/run/gate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from router.cert.pairs import CertError
from router.cert.watch import ListenerCerts
from router.config.listeners import Listener
from router.config.settings import Config, ConfigError
from router.listen import clienthello
from router.listen.accept import Acceptor, Closed, peek
from router.listen.alpn import ALPN, Negotiated
from router.listen.h2proto import H2
from router.listen.http1 import Http1
from router.listen.server import listen_socket
from router.listen.tcp import TCPCounters, TCPProxy
from router.listen.ui_proxyproto import ui_handler
from router.proxy.grpc import GrpcProxy
from router.table.state import RouterState

HANDSHAKE = 10.0  # seconds a TLS client gets for its handshake (rt= does not shorten it: docs/compat.md)

log = logging.getLogger("router.edge")

SERVED = {"http": "plain HTTP", "https": "HTTPS (HTTP/2 by ALPN)", "https+tcp+sni": "SNI routes, else HTTPS",
          "grpc": "gRPC (HTTP/2 without TLS)", "grpcs": "gRPC over TLS", "tcp": "TCP", "tcp+sni": "TCP routed by SNI",
          "tcp-dynamic": "dynamic TCP"}
NOT_YET = {"prometheus": "a Prometheus listener (scrape /metrics on ui.addr instead)"}
TCP_KINDS = ("tcp", "tcp+sni", "tcp-dynamic")
HTTP_KINDS = ("http", "https", "https+tcp+sni", "grpc", "grpcs")


def http_listener(cfg: Config) -> Listener | None:
    """The plain HTTP listener the HTTP server serves (the first one); None if there is none."""
    return next((lst for lst in cfg.listeners if lst.proto == "http"), None)


def check(cfg: Config) -> None:
    """ConfigError for a listener this router cannot serve."""
    for lst in cfg.listeners:
        if lst.proto not in SERVED:
            raise ConfigError(f"proxy.addr: listener {lst}: {NOT_YET[lst.proto]} is not served by this router yet")


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """router/listen/server.py's bound, not yet listening socket, with an OSError that names the address.
    Whoever serves it listens (`Edge._accept`, `Listener.add`), at once or when the gate opens."""
    try:
        return listen_socket((host, port), reuse_port)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None


def tcp_route_ports(table) -> set[int]:  # type: ignore[no-untyped-def]
    """fabio's tcp-dynamic rule: the ports of table hosts `[ip]:port` whose every target is tcp://."""
    out = set()
    if table is None:
        return out
    for row in table.routes():
        host = row["host"]
        port = host.rsplit(":", 1)[1] if ":" in host else ""
        if port.isascii() and port.isdigit():  # "²" passes isdigit() alone, and int() refuses it
            out.add((int(port), row["dst"].startswith("tcp://")))
    ports = {p for p, _ in out}
    return {p for p in ports if (p, False) not in out}


@dataclass
class CertView:
    """A TLS listener's certificates as the workers report them (Edge.absorb), shaped like ListenerCerts."""

    listener: Listener
    spec: Any
    names: list[str]
    updates: int
    failed_handshakes: int


class Edge:
    """TCP, TLS and gRPC listeners with their certificate watchers. With `reuse_port` (each proxy worker runs
    one) every listener is bound with SO_REUSEPORT, so the kernel spreads connections over the workers."""

    def __init__(self, cfg: Config, state: RouterState, reuse_port: bool = False, held: bool = False) -> None:
        self.cfg = cfg
        self.state = state
        self.reuse_port = reuse_port
        self.opened = asyncio.Event()  # open(): the held TCP acceptors listen, tcp-dynamic starts
        if not held:
            self.opened.set()
        self._waiting: list[Acceptor] = []
        self.tcp = TCPCounters()
        self.acceptors: list[Acceptor] = []
        self.certs: list[ListenerCerts] = []
        self.tasks: list[asyncio.Task] = []
        self.dynamic: dict[int, Acceptor] = {}  # tcp-dynamic: port -> its acceptor
        self.dynamic_ports: list[int] = []  # the workers' tcp-dynamic ports (absorb)
        self.grpc = GrpcProxy(cfg["proxy.dialtimeout"], cfg["proxy.grpcmaxrxmsgsize"], cfg["proxy.grpcmaxtxmsgsize"])

    def _proxy(self, kind: str, lst: Listener, tls: object = None) -> TCPProxy:
        return TCPProxy(kind, lambda: self.state.table, strategy=self.cfg["proxy.strategy"],
                        dial_timeout=self.cfg["proxy.dialtimeout"], counters=self.tcp, tls=tls,  # type: ignore[arg-type]
                        read_timeout=lst.read_timeout, write_timeout=lst.write_timeout)

    def _serve(self, sock: socket.socket, handler, lst: Listener, name: str,  # type: ignore[no-untyped-def]
               gated: bool = True) -> Acceptor:
        """Accept on `sock` with `handler`: at once, or for a proxy listener (`gated`) once `open()` ran."""
        acc = Acceptor(sock, handler, proxy_timeout=lst.proxy_timeout if lst.proxy_proto else 0.0, name=name)
        self.acceptors.append(acc)
        if self.opened.is_set() or not gated:
            self._accept(acc)
        else:
            self._waiting.append(acc)
        return acc

    def _accept(self, acc: Acceptor) -> None:
        acc.sock.listen(1024)
        self.tasks.append(asyncio.create_task(acc.serve(), name=f"listener {acc.name}"))

    def open(self) -> None:
        """Listen on the TCP and TLS sockets bound while held (see the module docstring); tcp-dynamic starts."""
        self.opened.set()
        waiting, self._waiting = self._waiting, []
        for acc in waiting:
            self._accept(acc)

    def http_split(self) -> tuple[bool, bool]:
        """(the HTTP server binds the first plain listener itself, there are HTTP-family listeners for
        start_http: TLS ones, more plain ones, or ones reading the PROXY protocol)."""
        first = http_listener(self.cfg)
        plain = first is not None and not first.proxy_proto
        others = any(lst.proto in HTTP_KINDS and (lst is not first or lst.proxy_proto) for lst in self.cfg.listeners)
        return plain, others

    async def _tls(self, lst: Listener, alpn: tuple[str, ...], key: str = "proxy.addr") -> ssl.SSLContext:
        certs = ListenerCerts(lst, alpn=alpn)
        try:
            ctx = (await certs.start()).context
        except CertError as e:
            raise ConfigError(f"{key}: listener {lst}: {e}") from None
        self.certs.append(certs)
        return ctx

    async def ui_tls(self, lst: Listener) -> ssl.SSLContext:
        """The context of an HTTPS `ui.addr` (fabio serves its UI over TLS with a `cs=`): HTTP/1.1 only, as
        uvicorn speaks it; the certificates are watched like a proxy listener's."""
        return await self._tls(lst, ("http/1.1",), key="ui.addr")

    def serve_ui(self, lst: Listener, server) -> None:  # type: ignore[no-untyped-def]
        """`pxyproto=true` on ui.addr: our acceptor reads the PROXY header, then uvicorn's protocol of `server`
        (the uvicorn Server, started without sockets) serves the connection (router/listen/ui_proxyproto.py)."""
        sock = bind(lst.host, lst.port)
        self._serve(sock, ui_handler(server), lst, f"ui.addr {lst}", gated=False)  # /health answers before a table

    async def start_http(self, server) -> None:  # type: ignore[no-untyped-def]
        """The HTTP-family listeners the HTTP server (router/listen/server.py) serves beside its first one:
        more plain ones, HTTPS (HTTP/2 or HTTP/1.1 by ALPN), https+tcp+sni, and any with pxyproto=."""
        first = http_listener(self.cfg)
        server.grpc = self.grpc  # gRPC calls on HTTP/2 streams with a grpc:// or grpcs:// route
        for lst in self.cfg.listeners:
            if lst.proto not in HTTP_KINDS or (lst is first and not lst.proxy_proto):
                continue
            ctx = await self._tls(lst, ALPN) if lst.tls else None
            sock = bind(lst.host, lst.port, self.reuse_port)
            if lst.proto not in ("grpc", "grpcs"):  # fabio's gRPC server has no rt=/wt=; its HTTP servers do
                server.set_timeouts(sock.getsockname()[1], lst.read_timeout, lst.write_timeout)
            factory = Negotiated if ctx is not None else H2 if lst.proto == "grpc" else Http1
            if lst.proto == "https+tcp+sni":
                self._serve(sock, self._sni_or_https(server, lst, ctx), lst, str(lst))
            elif lst.proxy_proto:
                self._serve(sock, self._handover(server, factory, ctx), lst, str(lst))
            elif lst.proto in ("grpc", "grpcs"):  # fabio's grpc.conn counts its gRPC server's connections
                await server.add(sock, lambda f=factory: self._grpc_conn(f(server)), ssl=ctx,
                                 ssl_handshake_timeout=HANDSHAKE if ctx is not None else None)
            else:
                await server.add(sock, lambda f=factory: f(server), ssl=ctx,
                                 ssl_handshake_timeout=HANDSHAKE if ctx is not None else None)
            log.info("%s proxy listening on %s:%d", lst.proto.upper(), lst.host, sock.getsockname()[1])

    def _grpc_conn(self, proto: asyncio.Protocol) -> asyncio.Protocol:
        self.grpc.stats.conn += 1
        return proto

    def _handover(self, server, factory, ctx):  # type: ignore[no-untyped-def]
        """After the acceptor's PROXY header: the socket goes to the HTTP(S) protocol with the header's client."""
        async def handle(sock: socket.socket, client: tuple[str, int], local: tuple[str, int]) -> None:
            loop = asyncio.get_running_loop()
            await loop.connect_accepted_socket(lambda: factory(server, client), sock, ssl=ctx,
                                               ssl_handshake_timeout=HANDSHAKE if ctx is not None else None)
        return handle

    def _sni_or_https(self, server, lst: Listener, ctx):  # type: ignore[no-untyped-def]
        """fabio's https+tcp+sni: a ClientHello whose server name has a TCP route is spliced there untouched;
        every other connection is terminated here and served as HTTPS."""
        tcp = self._proxy("tcp+sni", lst)
        https = self._handover(server, Negotiated, ctx)

        async def handle(sock: socket.socket, client: tuple[str, int], local: tuple[str, int]) -> None:
            try:
                data = await peek(sock, clienthello.MAX_HELLO, time.monotonic() + 5.0,
                                  lambda d: clienthello.server_name(d) is not None)
                name = clienthello.server_name(data) or ""
            except (clienthello.NotClientHello, Closed):
                name = ""  # not for a TCP route: the TLS handshake will say what it is
            route = self.state.table.lookup_host(name) if name and self.state.table is not None else None
            target = route.pick(self.cfg["proxy.strategy"]) if route is not None else None
            if target is not None and target.scheme == "tcp":
                await tcp(sock, client, local)
            else:
                await https(sock, client, local)
        return handle

    async def start(self) -> None:
        for lst in self.cfg.listeners:
            if lst.proto not in TCP_KINDS:
                continue
            tls = None
            if lst.tls:
                certs = ListenerCerts(lst)
                try:
                    tls = (await certs.start()).context
                except CertError as e:
                    raise ConfigError(f"proxy.addr: listener {lst}: {e}") from None
                self.certs.append(certs)
            if lst.proto == "tcp-dynamic":
                self.tasks.append(asyncio.create_task(self._dynamic(lst, tls), name=f"tcp-dynamic {lst}"))
                continue
            sock = bind(lst.host, lst.port, self.reuse_port)
            self._serve(sock, self._proxy(lst.proto, lst, tls), lst, str(lst))
            log.info("%s proxy listening on %s:%d", lst.proto.upper(), lst.host, sock.getsockname()[1])

    async def _dynamic(self, lst: Listener, tls: object) -> None:
        """fabio's tcp-dynamic: every `refresh`, a listener per TCP-only route port, closed when it goes."""
        handler = self._proxy("tcp-dynamic", lst, tls)
        await self.opened.wait()
        while True:
            want = tcp_route_ports(self.state.table)
            for port in set(self.dynamic) - want:
                log.info("tcp-dynamic: closing the listener on %s:%d (no TCP route left)", lst.host, port)
                self.dynamic.pop(port).close()
            for port in want - set(self.dynamic):
                try:
                    sock = bind(lst.host, port, self.reuse_port)
                except OSError as e:
                    log.debug("tcp-dynamic: %s", e)
                    continue
                log.info("tcp-dynamic: listening on %s:%d", lst.host, port)
                self.dynamic[port] = self._serve(sock, handler, lst, f"{lst.host}:{port}")
            await asyncio.sleep(lst.refresh)

    def absorb(self, merged: dict) -> None:
        """The workers' summed counters (router/run/edgestats.py merge) become this Edge's, for /metrics and
        /api/status: with workers, the main process serves no proxy listener itself."""
        self.tcp = TCPCounters(**{k: v for k, v in merged["tcp"].items()})
        g = self.grpc.stats
        for k, v in merged["grpc"].items():
            setattr(g, k, v if k != "buckets" or v else g.buckets)
        by_name = {str(lst): lst for lst in self.cfg.listeners}
        views = [CertView(by_name[name], by_name[name].cert_source, names, updates, failed)
                 for name, (_, names, updates, failed) in merged["certs"].items() if name in by_name]
        self.certs = [c for c in self.certs if isinstance(c, ListenerCerts)] + views  # type: ignore[list-item]
        self.dynamic_ports = merged["dynamic"]

    def describe(self) -> list[dict]:
        """Each listener of proxy.addr as /api/status shows it: protocol, TLS and its certificates."""
        certs = {id(c.listener): c for c in self.certs}
        out = []
        for lst in self.cfg.listeners:
            row = {"addr": lst.addr, "proto": lst.proto, "tls": lst.tls, "pxyproto": lst.proxy_proto,
                   "options": str(lst)}
            c = certs.get(id(lst))
            if c is not None:
                row.update(cert_source=c.spec.name, strictmatch=lst.strict_match, certificates=c.names,
                           certificate_updates=c.updates, no_certificate=c.failed_handshakes)
            if lst.proto == "tcp-dynamic":
                row["ports"] = sorted(self.dynamic) or self.dynamic_ports
            out.append(row)
        return out

    async def stop(self, grace: float = 0.0, grpc: bool = True) -> None:
        """Close the TCP listeners and certificate watchers; the gRPC upstream pool too unless `grpc` is
        False (the HTTP server's graceful stop still gives open gRPC calls proxy.grpcshutdowntimeout)."""
        for acc in self.acceptors:
            acc.close()
        for t in self.tasks:
            t.cancel()
        for acc in self.acceptors:
            await acc.wait_closed(grace)
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for c in self.certs:
            await c.stop()
        if grpc:
            await self.grpc.close()
