"""WebSocket upgrades as a byte-level tunnel (docs/datapath.md, "WebSocket").

The listener (router/listen/http1.py) hands an `Upgrade: websocket` request, once the requests before it
on the connection are answered, to the protocol class `tunnel_protocol(proxy)` made, giving it the raw
client transport, the request head (re-serialised) and whatever the client sent after it. The tunnel routes the request like any other (lookup, pick, ejection, strip/prepend, forwarding headers), opens
a plain TCP connection to the instance, writes the rewritten head and then copies bytes both ways until
either side closes. No frame is parsed, so nothing (text, binary, ping, close codes, extensions,
subprotocols) can be lost or altered, and the upstream's 101 reaches the client as the upstream wrote it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from router.proxy.auth import authorise
from router.proxy.headers import RoutingLoop
from router.proxy.paths import normalise_path, upstream_raw_path
from router.proxy.request_guard import check_request
from router.table import access

if TYPE_CHECKING:
    from router.proxy.handler import ProxyApp

log = logging.getLogger("router.websocket")

MAX_HEAD = 1 << 20


def _reply(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class _Upstream(asyncio.Protocol):
    """The upstream half: copies what the instance sends to the client, notes its status line."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.status = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.status = data.split(b"\r\n", 1)[0][9:12]
        self.tunnel.down += len(data)
        self.tunnel.client.write(data)

    def pause_writing(self) -> None:  # the instance is slow: stop reading the client
        self.tunnel.client.pause_reading()

    def resume_writing(self) -> None:
        self.tunnel.client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel(asyncio.Protocol):
    """The client half. One instance per upgraded connection."""

    proxy: ProxyApp  # set by tunnel_protocol()

    def __init__(self, config: Any = None, server_state: Any = None, app_state: Any = None, **_: Any) -> None:
        self.client: asyncio.Transport = None  # type: ignore[assignment]
        self.head = b""
        self.pending: list[bytes] = []
        self.upstream: _Upstream | None = None
        self.up = self.down = 0
        self.started = time.monotonic()
        self.closed = False
        self.desc = "?"
        self.task: asyncio.Task | None = None
        self.scope: dict | None = None  # the upgrade request as an ASGI-like scope, for the access log
        self.target: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.up += len(data)
            self.upstream.transport.write(data)
            return
        if self.task is not None:  # still connecting: keep it for after the head
            self.pending.append(data)
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.head, rest = self.head.split(b"\r\n\r\n", 1)
            if rest:
                self.pending.append(rest)
            self.task = asyncio.get_running_loop().create_task(self._open())
        elif len(self.head) > MAX_HEAD:
            self._fail("431 Request Header Fields Too Large", "request header fields too large\n")

    def pause_writing(self) -> None:  # the client is slow: stop reading the instance
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def _fail(self, status: str, text: str) -> None:
        self.client.write(_reply(status, text))
        self.client.close()
        self.closed = True
        log.info("websocket %s -> %s", self.desc, status)
        self._access(int(status[:3]), len(text))

    def _access(self, status: int, size: int) -> None:
        """One access-log line per upgrade, written when the tunnel ends (size: bytes sent to the client)."""
        alog = self.proxy.access_log
        if alog is None:
            return
        scope = self.scope or {"type": "http", "method": "GET", "headers": [], "path": "-", "raw_path": b"-",
                               "query_string": b"", "http_version": "1.1", "client": None}
        tap = alog.tap(None)
        tap.status, tap.size = status, size
        alog.log(scope, tap, self.target, time.monotonic() - self.started)

    def close(self) -> None:
        """Either side closed: close the other (after what is buffered has been written) and log once."""
        if self.closed:
            return
        self.closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self.client.close()
        if self.upstream is not None:
            self.proxy.stats.websockets_open -= 1
        status = self.upstream.status.decode("latin-1") if self.upstream is not None else "-"
        log.info("websocket %s status=%s up=%dB down=%dB duration=%.3fs", self.desc, status or "-",
                 self.up, self.down, time.monotonic() - self.started)
        if self.scope is not None:  # a connection that never sent a whole head made no request
            self._access(int(status) if status.isdigit() else 0, self.down)

    async def _open(self) -> None:
        proxy = self.proxy
        lines = self.head.decode("latin-1").split("\r\n")
        method, target_uri, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
        raw_path, _, query = target_uri.partition("?")
        peer = self.client.get_extra_info("peername") or ("", 0)
        scope = {"type": "http", "method": method, "headers": headers, "client": peer[:2], "http_version": "1.1",
                 "scheme": "wss" if self.client.get_extra_info("sslcontext") else "ws"}
        host = next((v.decode("latin-1") for n, v in headers if n == b"host"), "")
        decoded = unquote(raw_path)
        scope.update(path=decoded, raw_path=raw_path.encode("latin-1"), query_string=query.encode("latin-1"))
        self.scope = scope
        if (reject := check_request(scope)) is not None:  # the same guard as plain requests
            status, text = reject
            self._fail(f"{status} {HTTPStatus(status).phrase}", text)
            return
        path = normalise_path(decoded)
        self.desc = f"{peer[0]} {host}{raw_path}"
        table = proxy.state.table
        route = table.lookup(host, path, tls=scope["scheme"] == "wss") if table is not None else None
        if route is not None and route.policy is not None and route.policy.variants:  # match= (issue 19)
            route = proxy.policies.variant(route, table, host, scope["scheme"] == "wss", headers)
        if route is None:
            proxy.stats.noroute += 1
            self._fail(f"{proxy.noroute_status} No Route", "no route\n")
            return
        target = route.pick(proxy.strategy)
        if target is None:
            self._fail("503 Service Unavailable", "no healthy instance for this route\n")
            return
        target = self.target = proxy.ejector.choose(route, target, proxy.strategy)
        # the route's access rules and auth apply to upgrades exactly as to plain requests
        if target.opts and not access.permitted(target.opts, scope):
            self._fail("403 Forbidden", "access denied\n")
            return
        if target.opts and "auth" in target.opts:
            status, _ = await authorise(proxy.auth_schemes, target.opts["auth"], scope)
            if status:
                self._fail("401 Unauthorized", "authorization failed\n")
                return
        raw = upstream_raw_path(target, path, scope)  # the client's encoding, cut like the plain requests
        try:
            fwd, _ = proxy.forwarding.request_headers(scope, host, target)
        except RoutingLoop as e:
            self._fail("508 Loop Detected", f"{e}\n")
            return
        upgrade = next((v for n, v in headers if n == b"upgrade"), b"websocket").decode("latin-1")
        out = [f"{method} {raw}{'?' + query if query else ''} HTTP/1.1"]
        out += [f"{n}: {v}" for n, v in fwd]
        out += ["connection: Upgrade", f"upgrade: {upgrade}", "", ""]
        request = "\r\n".join(out).encode("latin-1")

        loop = asyncio.get_running_loop()
        tried: list = []
        while True:
            try:
                tls = _tls_context(target.tls_skip_verify) if target.scheme == "https" else None
                _, up = await asyncio.wait_for(
                    loop.create_connection(lambda: _Upstream(self), target.host, target.port, ssl=tls),
                    proxy.upstream.dial_timeout)
                proxy.ejector.succeeded(target)
                break
            except (TimeoutError, OSError) as e:
                proxy.ejector.failed(target)
                tried.append(target)
                nxt = proxy._another(route, tried)
                if nxt is None or len(tried) >= proxy.connect_attempts:
                    log.warning("upstream %s:%s unreachable: %s", target.host, target.port, e)
                    self._fail("502 Bad Gateway", "upstream unreachable\n")
                    return
                proxy.ejector.retries += 1
                target = self.target = proxy.ejector.choose(route, nxt, proxy.strategy, tried)
        self.desc += f" -> {target.host}:{target.port}{raw}"
        if self.closed:  # the client left while we connected
            up.transport.close()  # type: ignore[union-attr]
            return
        self.upstream = up
        proxy.stats.websockets_open += 1  # the tunnel is up: close() counts it down
        proxy.stats.websockets_total += 1
        up.transport.write(request)  # type: ignore[union-attr]
        for chunk in self.pending:
            self.up += len(chunk)
            up.transport.write(chunk)  # type: ignore[union-attr]
        self.pending.clear()


def _tls_context(skip_verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tunnel_protocol(proxy: ProxyApp) -> type[Tunnel]:
    """The tunnel protocol class for the listener (`Listener(tunnel=...)`), bound to this proxy."""
    return type("BoundTunnel", (Tunnel,), {"proxy": proxy})
