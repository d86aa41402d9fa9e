"""A route's traffic policy, built once per table build from its targets' options (issue 19).

Header matching: the targets of one ``host + path`` may carry different ``match=`` options. They are
grouped by their match; each group becomes a *variant* (a Route of its own with just those targets), and
the targets without ``match=`` stay the route's default pool. Precedence, most specific first:

1. more conditions (``X-Version=2&Accept~json`` before ``X-Version=2``);
2. then stronger conditions: an equal value (3) before a regex (2) before a bare presence test (1), summed;
3. then the option text, in ascending order, so the order never depends on registration order.

The first variant whose conditions all hold serves the request; if none does, the default pool does; if
there is no default pool either, the request falls through to the next route that matches its path (the
same order as :meth:`Table.lookup_all`), and else it gets the no-route answer. ``/api/routes`` shows each
target's match and its precedence (1 = tried first).

Rate limits and sticky sessions belong to a pool (the default one or a variant): the first target of the
pool that carries the option sets it for the whole pool (instances of one service carry the same tags).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from router.table.policyopts import Match, RateSpec, StickySpec

__all__ = ["RoutePolicy", "route_policy", "describe"]


class RoutePolicy:
    """What the proxy needs about one pool's policy; ``limiter`` and ``ids`` are filled by the proxy."""

    __slots__ = ("variants", "default", "default_route", "pool", "ratelimit", "sticky", "ids")

    def __init__(self, variants: tuple[tuple[Match, Any], ...], default: tuple, default_route: Any, pool: str,
                 ratelimit: RateSpec | None, sticky: StickySpec | None) -> None:
        self.variants = variants  # ((Match, Route), ...) in precedence order
        self.default = default  # the targets without match= (the route's own pool)
        # with variants: a Route of the default targets alone, so retries never reach a variant's instance
        self.default_route = default_route
        self.pool = pool  # the match text of a variant's pool, "" for the default one (keys its rate limit)
        self.ratelimit = ratelimit
        self.sticky = sticky
        self.ids: dict[str, Any] | None = None  # cookie value -> target, built on first use

    def precedence(self, match: Match | None) -> int:
        for i, (m, _) in enumerate(self.variants, 1):
            if m == match:
                return i
        return 0


def _first(targets: Sequence[Any], attr: str) -> Any:
    for t in targets:
        if t.policy is not None:
            v = getattr(t.policy, attr)
            if v is not None:
                return v
    return None


def route_policy(targets: Sequence[Any], variant: bool, make_route: Callable[[tuple], Any]) -> RoutePolicy | None:
    """The policy of a route whose targets carry policy options (None when none is route-level).

    ``make_route`` builds a variant Route from a group of targets (routes.py passes its Route class).
    """
    default: tuple = tuple(targets)
    variants: tuple[tuple[Match, Any], ...] = ()
    default_route = None
    pool = ""
    if variant:  # a variant's targets share one match; the default pool's have none
        first = targets[0].policy
        pool = first.match.text if first is not None and first.match is not None else ""
    else:
        groups: dict[Match | None, list] = {}
        for t in targets:
            m = t.policy.match if t.policy is not None else None
            groups.setdefault(m, []).append(t)
        if len(groups) > 1 or None not in groups:
            default = tuple(groups.pop(None, ()))
            ordered = sorted(groups.items(), key=lambda kv: kv[0].rank)  # type: ignore[union-attr]
            variants = tuple((m, make_route(tuple(g))) for m, g in ordered)  # type: ignore[misc]
            if default:
                default_route = make_route(default)
    rl, st = _first(default, "ratelimit"), _first(default, "sticky")
    if not variants and rl is None and st is None:
        return None
    return RoutePolicy(variants, default, default_route, pool, rl, st)


def describe(policy: Any, route_policy: RoutePolicy | None) -> dict[str, object]:
    """A target's policies for /api/routes and the routes page (option text as written, plus precedence)."""
    out: dict[str, object] = {}
    if policy.compress is not None:
        out["compress"] = ",".join(policy.compress) or "off"
    for side, edit in (("reqhdr", policy.req), ("resphdr", policy.resp)):
        if edit is not None:
            out[side] = {"del": sorted(edit.remove), "set": dict(edit.set), "add": [list(p) for p in edit.add]}
    if policy.match is not None:
        out["match"] = policy.match.text
        out["precedence"] = route_policy.precedence(policy.match) if route_policy is not None else 0
    if policy.ratelimit is not None:
        r = policy.ratelimit
        out["ratelimit"] = {"per_second": r.rate, "burst": r.burst, "per": "client" if r.per_client else "route"}
    if policy.maxbody is not None:
        out["maxbody"] = policy.maxbody
    if policy.sticky is not None:
        s = policy.sticky
        out["sticky"] = {"mode": s.mode, **({"cookie": s.cookie} if s.mode == "cookie" else
                                            {"on": s.header or "client address"})}
    return out
