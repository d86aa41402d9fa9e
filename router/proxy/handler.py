"""The proxy on proxy.addr: one request's whole journey.

lookup (host, normalised path) -> pick a target -> rewrite path and headers -> stream the request body
up and the response body down. `ProxyApp.serve(request, exchange)` is called by the listener for every
parsed request (router/listen/; the request record and the Exchange interface are described in
router/proxy/exchange.py); `ProxyApp.__call__` is the same journey as an ASGI app. No framework here:
this runs for every request, and everything a framework adds per request is cost (docs/datapath.md).
All per-route work (URL parsing, options, weights) was done when the table was built.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import TYPE_CHECKING

from router.proxy import redirect
from router.proxy.asgi import AsgiExchange
from router.proxy.attempts import Failed
from router.proxy.auth import BasicAuth, authorise
from router.proxy.exchange import ClientGone, Exchange, client_left
from router.proxy.headers import ForwardingHeaders, RoutingLoop
from router.proxy.paths import normalise_path, redirect_path, upstream_path, upstream_raw_path
from router.proxy.picker import FULL
from router.proxy.policies.bodylimit import BodyTooLarge
from router.proxy.policies.engine import Policies
from router.proxy.request_guard import check_request, send_rejection
from router.proxy.resilience import Resilience
from router.proxy.stats import CLIENT_GONE, RequestStats
from router.proxy.upstream import Upstream
from router.proxy.upstream_errors import UPSTREAM_FAILURES
from router.proxy.upstream_request import HeaderBlock
from router.table import access
from router.table.state import RouterState

if TYPE_CHECKING:
    from router.proxy.accesslog import AccessLog

log = logging.getLogger("router.proxy")

BROKE_OFF = 502  # status recorded when the instance broke off an answer whose head was already sent

MAX_CONNECT_ATTEMPTS = 3


__all__ = ["ClientGone", "ProxyApp", "send_status"]

_TEXT = (b"content-type", b"text/plain; charset=utf-8")


async def send_status(out: Exchange, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    body = text.encode()
    await out.respond(status, [_TEXT, (b"content-length", str(len(body)).encode()), *extra], body)



def _redirect_loops(target, scope: dict, host: str, path: str) -> bool:  # type: ignore[no-untyped-def]
    """fabio's loop guard for a redirect target: would its Location (without the query) send the client
    back to this very URL? One place for the check the first pick and the fallback picks both make."""
    raw = upstream_raw_path(target, path, scope)
    return redirect.is_loop(redirect.location(target.redirect_url, redirect_path(target, path, raw), host, b""),
                            scope, host, path)

class ProxyApp:
    """The proxy core for proxy.addr (and, through `__call__`, an ASGI application)."""

    def __init__(
        self,
        state: RouterState,
        *,
        strategy: str = "p2c",
        noroute_status: int = 404,
        header_timeout: float = 0.0,
        dial_timeout: float = 30.0,
        idle_timeout: float = 15.0,
        keepalive: float = 0.0,
        local_ip: str = "",
        forwarding: ForwardingHeaders | None = None,
        auth_schemes: dict[str, BasicAuth] | None = None,
        max_header_bytes: int = 1 << 20,
        connect_attempts: int = MAX_CONNECT_ATTEMPTS,
        eject_failures: int = 3,
        eject_duration: float = 1.0,
        access_log: AccessLog | None = None,
        max_idle: int = 10000,
        resilience: Resilience | None = None,
        policies: Policies | None = None,
    ) -> None:
        self.state = state
        self.strategy = strategy
        self.noroute_status = noroute_status
        self.header_timeout = header_timeout
        # proxy.maxconn is Go's MaxIdleConnsPerHost, whose 0 means its default of 2
        self.upstream = Upstream(dial_timeout=dial_timeout, idle_timeout=idle_timeout, keepalive=keepalive,
                                 max_idle=max_idle or 2)
        self.forwarding = forwarding or ForwardingHeaders(local_ip=local_ip)
        self.auth_schemes = auth_schemes or {}
        self.noroute_html = ""  # set by registry.noroute when registry.consul.noroutehtmlpath has a value
        self.max_header_bytes = max_header_bytes
        self.connect_attempts = connect_attempts
        res = resilience or Resilience(strategy=strategy, attempts=connect_attempts, eject_failures=eject_failures,
                                       eject_duration=eject_duration)
        self.lb, self.sender = res.build(self.upstream)  # router/proxy/resilience.py
        self.ejector = self.lb  # websocket tunnels, workers and /metrics use it by this name
        state.on_swap.append(self.lb.forget_left)  # an instance that left the table leaves its state behind
        self.stats = RequestStats()  # per-route counters, read by /metrics and the routes page
        self.access_log: AccessLog | None = access_log
        self.requests = 0  # requests served, for a worker's report (router/run/workers.py)
        self.policies = policies or Policies()  # issue 19's route options (router/proxy/policies/)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # an ASGI "websocket" scope: not used (upgrades are tunnelled by router/proxy/websocket.py); refuse it
            await send({"type": "websocket.close", "code": 1011})

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def close(self) -> None:
        """The listener stopped: flush the access log, close the upstream pool."""
        if self.access_log is not None:
            self.access_log.flush()
        await self.upstream.close()

    async def handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        """One request from an ASGI server. Our listeners (router/listen/) limit the head while they parse
        it; an ASGI server does not, so the limit is checked here, where it costs only this path."""
        out = AsgiExchange(scope, receive, send)
        head_bytes = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        for name, value in scope["headers"]:
            head_bytes += len(name) + len(value) + 4
        if head_bytes > self.max_header_bytes:
            await send_status(out, 431, "request header fields too large\n")
            return
        await self.serve(scope, out)

    async def serve(self, scope: dict, out: Exchange) -> None:
        """One request, then its route's counters (router/proxy/stats.py) and, if on, its access-log line
        (`_done`). One coroutine, not a serve() awaiting a _handle(): each await level costs on every
        suspend and resume, and at the creation of each request's coroutine."""
        t0 = perf_counter()
        self.requests += 1
        if (reject := check_request(scope)) is not None:  # smuggling, Host, target form (docs/reliability.md)
            await send_rejection(out, *reject)
            return self._done(t0, scope, out, None, None, reject[0])
        table = self.state.table
        if table is None:
            await send_status(out, 503, "routing table not loaded yet\n")
            return self._done(t0, scope, out, None, None, 503)
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        tls = scope.get("scheme") == "https"
        path = scope["path"]
        if not path or "//" in path or "/." in path:  # normalise_path()'s own test, inline: most paths pass
            path = normalise_path(path)
        route = table.lookup(host, path, tls=tls)
        if route is None:
            await self._noroute(out)
            return self._done(t0, scope, out, None, None, self.noroute_status)
        ctx = None
        if route.policy is not None:  # header variants, rate limit, sticky (router/proxy/policies/engine.py)
            ctx = await self.policies.enter(route, table, scope, host, tls, out)
            if ctx.route is None:
                await self._noroute(out)
                return self._done(t0, scope, out, None, None, self.noroute_status)
            if ctx.status:
                return self._done(t0, scope, out, ctx.route, None, ctx.status)
            route = ctx.route
        picker = route.lb or self.lb.picker(route)
        now = perf_counter()
        idx = picker.pick(now) if ctx is None or ctx.pin is None else self.policies.sticky(ctx, picker, scope, now)
        if idx < 0:
            return self._done(t0, scope, out, route, None, await self._unavailable(out, idx))
        target = picker.targets[idx]
        if target.redirect_code and _redirect_loops(target, scope, host, path):
            route, target = self._next_without_loop(table, route, scope, host, path, tls)
            if target is None:
                await self._noroute(out)
                return self._done(t0, scope, out, None, None, self.noroute_status)
            picker = self.lb.picker(route)
            idx = picker.index(target)
        opts = target.opts
        auth = bool(opts) and "auth" in opts  # asked once: three places below depend on it
        if opts and not access.permitted(opts, scope):
            await send_status(out, 403, "access denied\n")
            return self._done(t0, scope, out, route, target, 403)
        if auth:
            status, challenge = await authorise(self.auth_schemes, opts["auth"], scope)
            if status:
                await self._unauthorised(out, challenge)
                return self._done(t0, scope, out, route, target, 401)

        # upstream path: strip, then prepend, in the client's encoding
        up_path = upstream_path(target, path) if target.strip or target.prepend else path
        raw_path = scope.get("raw_path")
        query = scope.get("query_string") or b""
        raw: str | None = None  # the upstream path, decoded: only where it is not the client's own bytes
        if up_path == scope["path"] and raw_path:  # the common case, inline: the client's bytes go up as they came
            request_target = raw_path + b"?" + query if query else raw_path
        else:
            raw = upstream_raw_path(target, path, scope, up_path)
            request_target = (raw + "?" + query.decode("latin-1") if query else raw).encode("latin-1", "replace")

        if target.redirect_code:
            if raw is None:
                raw = raw_path.decode("latin-1")
            url = redirect.location(target.redirect_url, redirect_path(target, path, raw), host, query)
            await out.respond(target.redirect_code,
                              [(b"location", url.encode("latin-1", "replace")), (b"content-length", b"0")])
            return self._done(t0, scope, out, route, target, target.redirect_code)

        headers: HeaderBlock | list[tuple[str, str]] | None = None
        if not auth and (target.policy is None or target.policy.req is None):
            headers, has_body = self.forwarding.request_block(scope, host, target, request_target)  # the common case
        try:
            if headers is None:
                headers, has_body = self.forwarding.request_headers(scope, host, target)
        except RoutingLoop as e:
            log.warning("%s %s%s: %s (a route's target is this router?)", scope["method"], host, path, e)
            await send_status(out, 508, f"{e}\n")
            return self._done(t0, scope, out, route, target, 508)
        if auth:  # the credentials are for us, not for the upstream
            headers = [h for h in headers if h[0] != "authorization"]
        if target.policy is not None and target.policy.req is not None:
            headers = self.policies.request_headers(target, headers)
        body: AsyncIterator[bytes] | None = out.body() if has_body else None
        if body is not None and (self.policies.max_body or target.policy is not None):
            body, too_large = self.policies.body_limit(target, scope, body)  # maxbody=, proxy.maxbodybytes
            if too_large:
                await send_status(out, 413, "request body too large\n")
                return self._done(t0, scope, out, route, target, 413)
        path_qs = ""  # a HeaderBlock has its request line
        if type(headers) is not HeaderBlock:
            if raw is None:
                raw = raw_path.decode("latin-1")
            path_qs = raw + ("?" + query.decode("latin-1") if query else "")
        timeout = target.timeout or self.header_timeout

        try:
            resp, idx = await self.sender.send(picker, idx, scope["method"], path_qs, headers, body, timeout, now)
        except Failed as e:  # router/proxy/attempts.py: every try failed, or none more was allowed
            await send_status(out, e.status, e.text)
            return self._done(t0, scope, out, route, picker.targets[e.idx], e.status)
        except ClientGone:
            return self._done(t0, scope, out, route, target, CLIENT_GONE)
        except asyncio.CancelledError:  # the listener saw the client leave (router/proxy/exchange.py)
            if not client_left(out):
                raise
            return self._done(t0, scope, out, route, target, CLIENT_GONE)
        except BodyTooLarge:
            await send_status(out, 413, "request body too large\n")
            return self._done(t0, scope, out, route, target, 413)
        target = picker.targets[idx]

        try:
            out_headers = resp.forward  # response_headers()'s rule, applied while the head was parsed
            if out_headers is None:
                out_headers = self.forwarding.response_headers(resp.raw_headers)
            if tls:
                out_headers = self.forwarding.tls_response_headers(out_headers)
            if ctx is not None or target.policy is not None or self.policies.compress_all:
                out_headers, enc = self.policies.response(ctx, target, scope, resp.status, out_headers)
            else:
                enc = None
            if enc is not None:  # compressed (router/proxy/policies/compress.py)
                await enc.send(out, resp, out_headers, scope.get("http_version") == "1.0")
            elif (whole := resp.whole()) is not None:  # all of it is here (a small answer): one call
                await out.respond(resp.status, out_headers, whole)
            else:
                out.start(resp.status, out_headers)
                if getattr(out, "write_now", None) is not None:  # a Sink (router/proxy/exchange.py): no await per read
                    await resp.relay(out)  # type: ignore[arg-type]
                else:
                    async for chunk in resp.content.iter_any():
                        await out.write(chunk)  # waits while the client's write buffer is full (the slow-read bound)
                await out.end()
            status = resp.status
        except ClientGone:  # the client left mid-answer: stop reading the upstream
            resp.close()
            status = CLIENT_GONE
        except asyncio.CancelledError:  # the same, seen by the listener while we waited on the upstream
            resp.close()
            if not client_left(out):
                raise
            status = CLIENT_GONE
        except UPSTREAM_FAILURES as e:  # the instance broke off its answer mid-body
            # The head is out: the listener cuts the client's answer (closes the connection, resets the HTTP/2
            # stream) when serve() returns unfinished. An instance's failure, not ours: one line, no
            # traceback, and counted on the route as 502 (the client saw a truncated answer).
            # str(e): a record kept by a log handler would hold the exception, its traceback and so this answer
            log.warning("%s %s: %s broke off its answer: %s", scope["method"], scope["path"], target.url, str(e))
            resp.close()
            status = BROKE_OFF
        finally:
            resp.release()
        self._done(t0, scope, out, route, target, status)

    def _done(self, t0: float, scope: dict, out: Exchange, route, target, status: int) -> None:  # type: ignore[no-untyped-def]
        """The request is answered: count it on its route (route None: not routed) and log its line."""
        if route is not None:
            st = route.stats
            rs = st.get(target.url if target is not None else "") if st is not None else None
            if rs is None:
                rs = self.stats.attach(route, target)
            rs.record(status, perf_counter() - t0)
        alog = self.access_log
        if alog is not None:  # the exchange knows the status and the body bytes sent
            alog.log(scope, out, target, perf_counter() - t0)

    async def _unavailable(self, out: Exchange, idx: int) -> int:
        if idx == FULL:  # proxy.maxinflight: every instance has its share in flight
            self.lb.full += 1
            await send_status(out, 503, "every instance is at its limit of requests in flight\n", (b"retry-after", b"1"))
        else:
            await send_status(out, 503, "no healthy instance for this route\n")
        return 503

    async def _noroute(self, out: Exchange) -> None:
        self.stats.noroute += 1
        if not self.noroute_html:
            await send_status(out, self.noroute_status, "no route\n")
            return
        body = self.noroute_html.encode()
        await out.respond(self.noroute_status, [
            (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())], body)

    @staticmethod
    async def _unauthorised(out: Exchange, challenge: bytes | None) -> None:
        body = b"authorization failed\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        if challenge:
            headers.append((b"www-authenticate", challenge))
        await out.respond(401, headers, body)

    def _next_without_loop(self, table, looped, scope: dict, host: str, path: str, tls: bool):  # type: ignore[no-untyped-def]
        """fabio's redirect-loop guard: skip the looping host and try the next matching ones."""
        for route in table.lookup_all(host, path, tls=tls):
            t = None if route is looped else route.pick(self.strategy)
            if t is None:
                continue
            if t.redirect_code and _redirect_loops(t, scope, host, path):
                continue
            return route, t
        return None, None

    def _another(self, route, tried: list):  # type: ignore[no-untyped-def]
        for _ in range(8):
            t = route.pick(self.strategy)
            if t is not None and t not in tried:
                return t
        for t in route.targets:
            if t not in tried and t.weight > 0:
                return t
        return None
