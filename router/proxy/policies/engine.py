"""The proxy's side of the traffic policies (issue 19): the hooks router/proxy/handler.py calls.

A route without policy options pays one attribute test (``route.policy is None``) before its pick, one
(``target.policy is None``) before the request goes up and one on the response, plus one when
``proxy.gzip.contenttype`` turns compression on for every route. Everything a policy needs that does not depend on the request (parsed options, variant
routes, compiled regexps) was built with the table (router/table/policyopts.py, routepolicy.py).
"""

from __future__ import annotations

import re
from typing import Any

from router.proxy.policies import compress, rewrite, sticky
from router.proxy.policies.bodylimit import declared_length, limited
from router.proxy.policies.ratelimit import Limiter, retry_after

__all__ = ["Policies", "Ctx", "Counters"]


class Counters:
    """Process-wide policy counters for /metrics (the main process sums the workers', router/run/workers.py)."""

    __slots__ = ("ratelimited", "compressed_in", "compressed_out", "sticky_hits", "sticky_repins")

    def __init__(self) -> None:
        self.ratelimited = 0
        self.compressed_in = 0  # bytes before compression
        self.compressed_out = 0  # bytes after
        self.sticky_hits = 0
        self.sticky_repins = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Ctx:
    """What the route-level hook decided for one request."""

    __slots__ = ("route", "status", "pin", "pinned")

    def __init__(self, route: Any, status: int = 0, pin: Any = None) -> None:
        self.route = route  # the route (or header variant) that serves; None: none does (no-route answer)
        self.status = status  # non-zero: already answered with this status (429)
        self.pin = pin  # the StickySpec of a sticky pool (None after a hash pick: no cookie to set)
        self.pinned: Any = None  # the target a valid cookie named (None: the response gets a Set-Cookie)


class Policies:
    def __init__(self, *, gzip_types: str = "", min_size: int = 1024, workers: int = 1, max_body: int = 0) -> None:
        self.max_body = max_body  # proxy.maxbodybytes; 0 = no limit
        types = re.compile(gzip_types) if gzip_types else None
        self.compress_all = types is not None  # proxy.gzip.contenttype: every route compresses
        self.global_plan = compress.Plan(compress.ENCODINGS, types, min_size) if types is not None else None
        self.default_types = types or re.compile(compress.DEFAULT_TYPES)
        self.min_size = min_size
        self.workers = max(1, workers)
        self.counters = Counters()
        self._limiters: dict[tuple, Limiter] = {}
        self._plans: dict[tuple[str, ...], compress.Plan] = {}

    # ----------------------------------------------------------------------------- before the upstream

    async def enter(self, route: Any, table: Any, scope: dict, host: str, tls: bool, out: Any) -> Ctx:
        """Header variant and rate limit for a route whose ``policy`` is set; notes a sticky pool in ``pin``.

        The pick itself stays with the route's picker (router/proxy/balance.py): :meth:`sticky` chooses the
        index only when the pool is sticky."""
        pol = route.policy
        if pol.variants:
            found = self._variant(route, scope["headers"])
            if found is None:
                found = self._fall_through(route, table, host, tls, scope["headers"])
            route = found
            if route is None:
                return Ctx(None)
            pol = route.policy
            if pol is None:
                return Ctx(route)
        rl = pol.ratelimit
        if rl is not None:
            wait = self._limiter(route, rl).check((scope.get("client") or ("",))[0] or "")
            if wait:
                self.counters.ratelimited += 1
                await _too_many(out, retry_after(wait))
                return Ctx(route, 429)
        return Ctx(route, 0, pol.sticky)

    def sticky(self, ctx: Ctx, picker: Any, scope: dict, now: float) -> int:
        """The picker index for a sticky pool: the cookie's instance, or the highest rendezvous score among
        the instances not ejected now; else (a new client, a re-pin, or that instance at proxy.maxinflight)
        the picker's own choice."""
        st = ctx.pin
        targets, states = picker.targets, picker.states
        if st.mode == "hash":
            ctx.pin = None  # nothing to set on the response
            key = ""
            if st.header:
                name = st.header.encode("latin-1")
                key = next((v.decode("latin-1") for n, v in scope["headers"] if n == name), "")
            if not key:
                key = (scope.get("client") or ("",))[0] or ""
            i = sticky.best_index(sticky.key_hash(key), targets, [s.until > now for s in states])
            return i if i >= 0 and not _full(picker, i) else picker.pick(now)
        have = sticky.cookie_value(scope["headers"], st.cookie.encode("latin-1"))
        if have:
            ids = ctx.route.policy.ids
            if ids is None:
                ids = ctx.route.policy.ids = {sticky.target_id(t.service, t.url): t for t in ctx.route.targets}
            t = ids.get(have)
            i = picker.index(t) if t is not None else -1
            if i >= 0 and not states[i].until > now and not _full(picker, i):
                self.counters.sticky_hits += 1
                ctx.pinned = targets[i]
                return i
            self.counters.sticky_repins += 1
        return picker.pick(now)

    def variant(self, route: Any, table: Any, host: str, tls: bool, headers: list) -> Any:
        """The header variant (or default pool, or next shorter path) that serves; None: none does. For
        WebSocket upgrades (router/proxy/websocket.py), which take no other policy."""
        found = self._variant(route, headers)
        return found if found is not None else self._fall_through(route, table, host, tls, headers)

    @staticmethod
    def _variant(route: Any, headers: list) -> Any:
        for m, r in route.policy.variants:
            if m.test(headers):
                return r
        return route.policy.default_route

    def _fall_through(self, route: Any, table: Any, host: str, tls: bool, headers: list) -> Any:
        """No variant matched and the route has no default pool: the route of the next shorter path that
        matches the request serves it (found by looking up the path cut just before this route's path)."""
        while len(route.path) > 1:
            route = table.lookup(host, route.path[:-1], tls=tls)
            if route is None:
                return None
            if route.policy is None or not route.policy.variants:
                return route
            v = self._variant(route, headers)
            if v is not None:
                return v
        return None

    def _limiter(self, route: Any, spec: Any) -> Limiter:
        # keyed by route and spec, not the Route object: a table rebuild keeps the bucket's state
        key = (route.host, route.path, route.policy.pool, spec)
        lim = self._limiters.get(key)
        if lim is None:
            if len(self._limiters) > 10000:
                self._limiters.clear()
            lim = self._limiters[key] = Limiter(spec.rate, spec.burst, spec.per_client, self.workers)
        return lim

    def body_limit(self, target: Any, scope: dict, body: Any) -> tuple[Any, bool]:
        """The body wrapped in its limit, and True when its declared length is already over it (413)."""
        pol = target.policy
        limit = pol.maxbody if pol is not None and pol.maxbody is not None else self.max_body
        if not limit:
            return body, False
        if declared_length(scope["headers"]) > limit:
            return body, True
        return limited(body, limit), False

    @staticmethod
    def request_headers(target: Any, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        edit = target.policy.req
        return headers if edit is None else rewrite.request(edit, headers)

    # ----------------------------------------------------------------------------- the response

    def response(self, ctx: Ctx | None, target: Any, scope: dict, status: int,
                 headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], compress.Encoder | None]:
        """Response headers after rewriting, Set-Cookie and Vary; an Encoder when the body is compressed."""
        pol = target.policy
        p = self.global_plan
        if pol is not None:
            if pol.resp is not None:
                headers = rewrite.response(pol.resp, headers)
            if pol.compress is not None:
                p = self._plan(pol.compress)
        if ctx is not None and ctx.pin is not None and ctx.pinned is not target:
            # a new client, a re-pin, or a retry that went to another instance: name the one that answered
            cookie = sticky.set_cookie(ctx.pin, sticky.target_id(target.service, target.url), ctx.route.path,
                                       scope.get("scheme") == "https")
            headers = [*headers, (b"set-cookie", cookie)]
        if p is None:
            return headers, None
        accept = ""
        for n, v in scope["headers"]:
            if n == b"accept-encoding":
                accept = v.decode("latin-1") if not accept else accept + ", " + v.decode("latin-1")
        headers, enc = compress.plan(p, scope["method"], accept, status, headers)
        return headers, compress.Encoder(enc, p.types, self.counters) if enc else None

    def _plan(self, encodings: tuple[str, ...]) -> compress.Plan | None:
        if not encodings:
            return None
        p = self._plans.get(encodings)
        if p is None:
            p = self._plans[encodings] = compress.Plan(encodings, self.default_types, self.min_size)
        return p


def _full(picker: Any, i: int) -> bool:
    """The instance has proxy.maxinflight requests in flight: the picker chooses instead (or answers 503)."""
    cap = picker.lb.max_inflight
    return bool(cap) and picker.states[i].outstanding >= cap


async def _too_many(out: Any, seconds: int) -> None:
    """429 on the request's Exchange (router/proxy/exchange.py)."""
    body = b"too many requests\n"
    await out.respond(429, [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"retry-after", str(seconds).encode())], body)
