"""The listeners of `proxy.addr` beyond the plain HTTP one: which of them this router serves, and
serving them (TCP, tcp+sni and tcp-dynamic, with TLS and its certificate sources where a `cs=` asks).

Every listener fabio accepts is parsed (router/config/listeners.py); one whose protocol is not served
yet stops startup here, naming it, rather than listening and answering with the wrong protocol. TCP
listeners run in the main process (with `proxy.workers` > 1 the workers serve HTTP only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from router.cert.pairs import CertError
from router.cert.watch import ListenerCerts
from router.config.listeners import Listener
from router.config.settings import Config, ConfigError
from router.listen.accept import Acceptor
from router.listen.tcp import TCPCounters, TCPProxy
from router.table.state import RouterState

log = logging.getLogger("router.edge")

SERVED = {"http": "plain HTTP", "tcp": "TCP", "tcp+sni": "TCP routed by SNI", "tcp-dynamic": "dynamic TCP"}
NOT_YET = {
    "https": "an HTTPS listener", "https+tcp+sni": "an https+tcp+sni listener", "grpc": "a gRPC listener",
    "grpcs": "a gRPC listener", "prometheus": "a Prometheus listener (scrape /metrics on ui.addr instead)",
}
TCP_KINDS = ("tcp", "tcp+sni", "tcp-dynamic")


def http_listener(cfg: Config) -> Listener | None:
    """The plain HTTP listener the HTTP server serves (the first one); None if there is none."""
    return next((lst for lst in cfg.listeners if lst.proto == "http"), None)


def check(cfg: Config) -> None:
    """ConfigError for a listener this router cannot serve."""
    http = http_listener(cfg)
    for lst in cfg.listeners:
        if lst.proto not in SERVED:
            raise ConfigError(f"proxy.addr: listener {lst}: {NOT_YET[lst.proto]} is not served by this router yet")
        if lst.proto == "http" and lst is not http:
            raise ConfigError(f"proxy.addr: listener {lst}: only one plain HTTP listener is served yet ({http})")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def tcp_route_ports(table) -> set[int]:  # type: ignore[no-untyped-def]
    """fabio's tcp-dynamic rule: the ports of table hosts `[ip]:port` whose every target is tcp://."""
    out = set()
    if table is None:
        return out
    for row in table.routes():
        host = row["host"]
        if ":" in host and host.rsplit(":", 1)[1].isdigit():
            out.add((int(host.rsplit(":", 1)[1]), row["dst"].startswith("tcp://")))
    ports = {p for p, _ in out}
    return {p for p in ports if (p, False) not in out}


class Edge:
    """TCP listeners (and, as they land, TLS ones) with their certificate watchers."""

    def __init__(self, cfg: Config, state: RouterState) -> None:
        self.cfg = cfg
        self.state = state
        self.tcp = TCPCounters()
        self.acceptors: list[Acceptor] = []
        self.certs: list[ListenerCerts] = []
        self.tasks: list[asyncio.Task] = []
        self.dynamic: dict[int, Acceptor] = {}  # tcp-dynamic: port -> its acceptor

    def _proxy(self, kind: str, lst: Listener, tls: object = None) -> TCPProxy:
        return TCPProxy(kind, lambda: self.state.table, strategy=self.cfg["proxy.strategy"],
                        dial_timeout=self.cfg["proxy.dialtimeout"], counters=self.tcp, tls=tls,  # type: ignore[arg-type]
                        read_timeout=lst.read_timeout, write_timeout=lst.write_timeout)

    def _serve(self, sock: socket.socket, handler: TCPProxy, lst: Listener, name: str) -> Acceptor:
        acc = Acceptor(sock, handler, proxy_timeout=lst.proxy_timeout if lst.proxy_proto else 0.0, name=name)
        self.acceptors.append(acc)
        self.tasks.append(asyncio.create_task(acc.serve(), name=f"listener {name}"))
        return acc

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
            sock = bind(lst.host, lst.port)
            self._serve(sock, self._proxy(lst.proto, lst, tls), lst, str(lst))
            log.info("%s proxy listening on %s:%d", lst.proto.upper(), lst.host, sock.getsockname()[1])

    async def _dynamic(self, lst: Listener, tls: object) -> None:
        """fabio's tcp-dynamic: every `refresh`, a listener per TCP-only route port, closed when it goes."""
        handler = self._proxy("tcp-dynamic", lst, tls)
        while True:
            want = tcp_route_ports(self.state.table)
            for port in set(self.dynamic) - want:
                log.info("tcp-dynamic: closing the listener on %s:%d (no TCP route left)", lst.host, port)
                self.dynamic.pop(port).close()
            for port in want - set(self.dynamic):
                try:
                    sock = bind(lst.host, port)
                except OSError as e:
                    log.debug("tcp-dynamic: %s", e)
                    continue
                log.info("tcp-dynamic: listening on %s:%d", lst.host, port)
                self.dynamic[port] = self._serve(sock, handler, lst, f"{lst.host}:{port}")
            await asyncio.sleep(lst.refresh)

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
                row["ports"] = sorted(self.dynamic)
            out.append(row)
        return out

    async def stop(self, grace: float = 0.0) -> None:
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
