"""The routing table: built from route commands, immutable once returned, cheap to rebuild in part.

Why it looks like this (user-voice items 14-17):

* fabio re-sorted the table on every add and took minutes at 60k routes; it also matched glob hosts by
  walking every host.  Here the table is a dict ``raw host -> _Host`` plus lookup indexes, so a lookup is
  O(labels in the host + distinct path lengths of that host), independent of the number of routes.
* A change to one service must not rebuild everything.  :class:`TableBuilder` keeps the compiled targets
  per service and per route key ``(host, path)``, and rebuilds only the keys a change touches.  Every
  manual (override) command affects route keys independently of each other (an ``add``, a ``del`` with a
  source and a ``weight`` touch one key; ``del <svc>`` and ``del tags`` are evaluated per key), so the
  manual list is simply re-applied to each rebuilt key, in order, after the service targets.  When the
  manual list itself changes every key is rebuilt.
* New tables share the unchanged ``_Host`` objects and ``Route`` objects with the previous one; a Table
  that has been returned is never mutated.
* fabio's 10,000-slot ring per route is replaced by pickers that need no memory for the common case of
  equal weights (see :class:`Route`).

Deliberate differences from fabio 1.7.3:

* A bad command is reported (:class:`LineError` with source and line) and skipped; fabio drops the table.
* Host precedence is exact host > longest ``*.`` wildcard > shorter wildcard > "".  Other glob hosts rank
  by pattern length.  fabio's reversed-string sort agrees for ``*.`` wildcards but can put a glob before
  an exact host: ``*foo.com`` (or ``{a,b}.foo.com``) before ``foo.com`` (``a.foo.com``) (user-voice item 17).
* ``route del``/``route weight`` lowercase the host of their source like ``route add`` does.
* With the ``glob`` matcher ``*`` stays within a path segment and ``**`` crosses segments.

Within a route, targets are in fabio's order: the service targets in descending order of their
``route add`` text (fabio sorts the generated service lines in reverse before adding them), then the
manual additions in their order; so a table does not depend on the order in which services were updated,
and ``render()`` compares line by line with fabio's ``Table.String()``.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import logging
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from router.config.settings import parse_duration as config_duration
from router.table import access
from router.table.policyopts import POLICY_OPTS, PolicyError, TargetPolicy, target_policy
from router.table.routecmd import LineError, RouteCmd
from router.table.routepolicy import describe, route_policy

__all__ = ["TableBuilder", "Table", "Route", "Target"]

log = logging.getLogger("router.table")

_EMPTY_OPTS: Mapping[str, str] = MappingProxyType({})
_GLOB_CHARS = frozenset("*?[]{}\\")
_RING_MAX = 1000  # slots of the rr ring for unequal weights (fabio: 10,000 per route, always)
_FABIO_SLOTS = 10000


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream of a route, with everything the proxy needs parsed at build time."""

    service: str
    tags: tuple[str, ...]
    opts: Mapping[str, str]
    url: str
    scheme: str
    host: str
    port: int
    fixed_weight: float
    weight: float
    strip: str
    prepend: str
    host_header: str
    tls_skip_verify: bool
    redirect_code: int
    redirect_url: str
    timeout: float = 0.0  # seconds, from opts "timeout=2s"; 0 = no per-route timeout
    source: str = ""  # where the command came from (a Consul instance: "service:<name>/<ID>"): the instance's identity
    policy: TargetPolicy | None = None  # the traffic-policy options (router/table/policyopts.py); None: none

    def __hash__(self) -> int:
        # opts is a mapping (unhashable); equal Targets agree on these fields, so this is a valid hash.
        return hash((self.service, self.url, self.scheme, self.host, self.port, self.tags, self.fixed_weight,
                     self.weight))


class _RawTarget:
    """Same slot layout as :class:`Target`, without the frozen ``__setattr__``.

    Why: a frozen dataclass sets each field through ``object.__setattr__``, which makes building a Target
    cost ~2 us; a build creates one per (route, target) pair, so that was most of a 60k-route build.  We
    construct this plain twin and then switch ``__class__`` to Target (allowed: identical slots), which is
    ~3x faster.  The result is an ordinary, frozen Target.
    """

    __slots__ = Target.__slots__

    def __init__(self, service, tags, opts, url, scheme, host, port, fixed_weight, weight, strip,
                 prepend, host_header, tls_skip_verify, redirect_code, redirect_url, timeout, source="",
                 policy=None) -> None:
        self.service = service
        self.tags = tags
        self.opts = opts
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.fixed_weight = fixed_weight
        self.weight = weight
        self.strip = strip
        self.prepend = prepend
        self.host_header = host_header
        self.tls_skip_verify = tls_skip_verify
        self.redirect_code = redirect_code
        self.redirect_url = redirect_url
        self.timeout = timeout
        self.source = source
        self.policy = policy


assert _RawTarget.__slots__ == tuple(f for f in Target.__dataclass_fields__)


def _new_target(*args: object) -> Target:
    t = _RawTarget(*args)
    t.__class__ = Target  # type: ignore[assignment]
    return t  # type: ignore[return-value]


def _reweighted(t: Target, w: float) -> Target:
    if t.weight == w:
        return t
    return _new_target(t.service, t.tags, t.opts, t.url, t.scheme, t.host, t.port, t.fixed_weight, w, t.strip,
                       t.prepend, t.host_header, t.tls_skip_verify, t.redirect_code, t.redirect_url, t.timeout,
                       t.source, t.policy)


def _refixed(t: Target, fixed: float) -> Target:
    return _new_target(t.service, t.tags, t.opts, t.url, t.scheme, t.host, t.port, fixed, t.weight, t.strip,
                       t.prepend, t.host_header, t.tls_skip_verify, t.redirect_code, t.redirect_url, t.timeout,
                       t.source, t.policy)


class Route:
    """All targets for one ``host + path``, with the picker state.

    Pickers: with equal weights (the usual case) ``rnd`` picks from the target tuple and ``rr`` walks it
    with a per-route counter, so no ring is allocated.  With unequal weights ``rnd`` bisects a cumulative
    weight array and ``rr`` walks a smooth weighted ring whose slot counts follow fabio's
    ``int(10000*w)`` (at least 1), reduced by their gcd and scaled down towards ``_RING_MAX`` slots,
    but never so far that the smallest share would need less than one slot.
    Targets with weight 0 are never picked.
    """

    __slots__ = ("host", "path", "targets", "_pool", "_cum", "_ring", "_count", "_regex", "stats", "lb",
                 "policy")

    def __init__(self, host: str, path: str, targets: tuple[Target, ...], _variant: bool = False) -> None:
        self.stats: dict | None = None  # target URL -> router.stats.RouteStats, filled on first requests
        self.lb = None  # router.proxy.picker.RoutePicker, built on the first request (per table build)
        self.host = host
        self.path = path
        self.targets = targets
        self._cum: list[float] | None = None
        self._ring: tuple[Target, ...] | None = None
        self._count = itertools.count()
        self._regex: re.Pattern[str] | None = None
        self.policy = None  # router/table/routepolicy.py: header variants, rate limit, sticky; None for most
        for t in targets:
            if t.policy is not None:
                self.policy = route_policy(targets, _variant, lambda g: Route(host, path, g, True))
                if self.policy is not None:
                    targets = self.policy.default  # the pool: the targets without match=
                break
        if len(targets) == 1:
            self._pool: tuple[Target, ...] = targets if targets[0].weight > 0 else ()
            return
        live = tuple(t for t in targets if t.weight > 0)
        self._pool = live
        if len(live) > 1 and any(t.weight != live[0].weight for t in live):
            self._cum = list(itertools.accumulate(t.weight for t in live))

    def __repr__(self) -> str:
        return f"Route({self.host!r}, {self.path!r}, {len(self.targets)} targets)"

    def pick(self, strategy: str = "rnd") -> Target | None:
        pool = self._pool
        n = len(pool)
        if n <= 1:
            return pool[0] if n else None
        if self._cum is None:
            if strategy == "rr":
                return pool[next(self._count) % n]
            return pool[random.randrange(n)]
        if strategy == "rr":
            ring = self._ring or self._build_ring()
            return ring[next(self._count) % len(ring)]
        cum = self._cum
        i = bisect.bisect_right(cum, random.random() * cum[-1])
        return pool[min(i, n - 1)]

    def ring(self) -> tuple[Target, ...]:
        """The rr ring for unequal weights (empty with equal ones: then rr simply walks the targets)."""
        if self._cum is None:
            return ()
        return self._ring or self._build_ring()

    def _build_ring(self) -> tuple[Target, ...]:
        """Smooth weighted round robin over the reduced slot counts (built once, on the first rr pick)."""
        slots = [max(1, int(_FABIO_SLOTS * t.weight)) for t in self._pool]
        g = math.gcd(*slots)
        slots = [s // g for s in slots]
        total = sum(slots)
        if total > _RING_MAX:
            # never scale the smallest share below one slot: with many targets (fabio's "more than 1000
            # routes" table row) that would round every small target up and starve the big one
            scale = max(_RING_MAX / total, 1 / min(slots))
            slots = [max(1, round(s * scale)) for s in slots]
            total = sum(slots)
        current = [0] * len(slots)
        ring = []
        for _ in range(total):
            for i, s in enumerate(slots):
                current[i] += s
            best = max(range(len(slots)), key=current.__getitem__)
            current[best] -= total
            ring.append(self._pool[best])
        self._ring = tuple(ring)
        return self._ring


def _weights(fixed: Sequence[float]) -> list[float]:
    """fabio's weighTargets: fixed shares (scaled when they overflow, or fill everything), rest split."""
    n = len(fixed)
    if n == 1:
        return [1.0]  # whatever its fixed weight, a lone target gets everything (scaled by 1/sumFixed)
    sum_fixed = sum(f for f in fixed if f > 0)
    if sum_fixed <= 0:
        return [1.0 / n] * n
    n_dyn = sum(1 for f in fixed if f <= 0)
    scale = 1.0 / sum_fixed if sum_fixed > 1 or (n_dyn == 0 and sum_fixed < 1) else 1.0
    dyn = max(0.0, (1 - sum_fixed) / n_dyn) if n_dyn else 0.0
    return [f * scale if f > 0 else dyn for f in fixed]


def _weigh(targets: Sequence[Target]) -> tuple[Target, ...]:
    ws = _weights([t.fixed_weight for t in targets])
    return tuple(_reweighted(t, w) for t, w in zip(targets, ws, strict=True))


# ---------------------------------------------------------------------------------------------------------
# Parsing what a command says into Targets and keys.


def hostpath(src: str) -> tuple[str, str]:
    """``host/path`` -> (host, /path); ``/path`` -> ("", /path); ``host`` -> (host, /); ``:port`` -> (:port, "").

    Hosts are lowercased here for add, del and weight alike (fabio only lowercases on add).
    """
    if src.startswith(":"):
        return src.lower(), ""
    i = src.find("/")
    if i < 0:
        return src.lower(), "/"
    return src[:i].lower(), src[i:]


class _CmdError(Exception):
    pass


def parse_duration(text: str) -> float:
    """Go-style duration (``2s``, ``500ms``, ``1m30s``, ``0``) in seconds; a bad one is a command error."""
    try:
        return config_duration(text) if text else _bad_duration(text)
    except ValueError:
        return _bad_duration(text)


def _bad_duration(text: str) -> float:
    raise _CmdError(f"invalid duration {text!r}")


_URL = re.compile(
    r"([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/?#@]*@)?((\[[^\]/?#]*\]|[^:/?#]*)(?::([^/?#]*))?)(?:[/?#]|$)")


def _split_url(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port or None, host[:port] as written) of an absolute URL; one regex match per target.

    The last one is Go's ``url.Host`` (brackets of an IPv6 address kept, no port added), which is what
    fabio sends as ``Host`` for ``host=dst``.
    """
    m = _URL.match(url)
    if m is None:
        raise _CmdError(f"invalid destination URL {url!r}: scheme://host[:port] expected")
    scheme, written, host, port_text = m.groups()
    if not host:
        raise _CmdError(f"invalid destination URL {url!r}: no host")
    if host[0] == "[":
        host = host[1:-1]
    if not port_text:  # "http://h:" is accepted by Go's url.Parse too
        return scheme.lower(), host, None, written
    if not port_text.isdigit() or int(port_text) > 65535:
        raise _CmdError(f"invalid destination URL {url!r}: bad port {port_text!r}")
    return scheme.lower(), host, int(port_text), written


KNOWN_OPTS = frozenset({"strip", "prepend", "host", "proto", "tlsskipverify", "redirect", "allow", "deny", "auth",
                        "register", "timeout", "pxyproto", "grpcservername"}) | POLICY_OPTS
_reported_opts: set[str] = set()
_reported_redirects: set[tuple[str, str]] = set()


def _note_bad_redirect(code: str, cmd: RouteCmd) -> None:
    """fabio logs a redirect= that is not a 3xx code and proxies the route; so do we (once per service/value)."""
    if (cmd.service, code) in _reported_redirects:
        return
    if len(_reported_redirects) < 10000:
        _reported_redirects.add((cmd.service, code))
    log.error("route option redirect=%r (service %s, %s line %d): a 3xx status code is expected; the redirect is "
              "ignored and the route is proxied to %s", code, cmd.service, cmd.source or "-", cmd.line, cmd.dst)


def _note_unknown_opts(opts: Mapping[str, str], service: str) -> None:
    """Unknown options are kept (and shown by /api/routes) and logged once per name, never fatal."""
    for name in opts.keys() - KNOWN_OPTS - _reported_opts:
        _reported_opts.add(name)
        log.warning("route option %r (service %s) is not known to this router; kept and ignored", name, service)


def make_target(cmd: RouteCmd) -> Target:
    """Compile a ``route add`` into a Target (weight 1.0 until the route is weighed).  Raises _CmdError."""
    if not cmd.src or not cmd.dst:
        raise _CmdError("source and destination must not be empty")
    scheme, host, port, written_host = _split_url(cmd.dst)
    opts = dict(cmd.opts)
    if opts and not opts.keys() <= KNOWN_OPTS:
        _note_unknown_opts(opts, cmd.service)
    strip = opts.get("strip", "")
    if strip and not strip.startswith("/"):
        raise _CmdError(f"invalid option strip={strip!r}: must start with '/'")
    redirect_code, redirect_url = 0, ""
    if "redirect" in opts:
        code = opts["redirect"]
        if code.isdigit() and 300 <= int(code) <= 399:
            redirect_code, redirect_url = int(code), cmd.dst
        else:
            _note_bad_redirect(code, cmd)
    if opts.get("proto") == "https" and scheme == "http":
        scheme = "https"
    if port is None:
        port = 443 if scheme in ("https", "grpcs", "wss") else 80 if scheme in ("http", "grpc", "ws") else 0
    timeout = parse_duration(opts["timeout"]) if "timeout" in opts else 0.0
    try:
        access.rules_for(opts)  # validated (and cached for the proxy) now, not on the first request
    except ValueError as e:
        raise _CmdError(f"invalid access rules: {e}") from None
    skip = opts.get("tlsskipverify", "").lower() in ("true", "1", "t")
    host_header = opts.get("host", "")
    if host_header == "dst":
        host_header = written_host
    try:
        policy = target_policy(opts, config_duration) if opts else None
    except PolicyError as e:
        raise _CmdError(f"invalid option {e}") from None
    return _new_target(cmd.service, cmd.tags, MappingProxyType(opts) if opts else _EMPTY_OPTS, cmd.dst, scheme,
                       host, port, cmd.weight, 1.0, strip, opts.get("prepend", ""), host_header, skip,
                       redirect_code, redirect_url, timeout, cmd.source, policy)


def _err(cmd: RouteCmd, reason: str) -> LineError:
    return LineError(cmd.source, cmd.line, str(cmd), reason)


def glob_regex(pattern: str, sep: str | None) -> re.Pattern[str]:
    """Compile a glob (``*``, ``**``, ``?``, ``[..]``, ``[!..]``, ``{a,b}``, ``\\x``) to a full-match regex.

    With ``sep`` (paths use ``/``) ``*`` and ``?`` stay within a segment and ``**`` crosses them; without it
    (hosts, like fabio's gobwas globs) ``*`` matches anything.
    """
    any_one = f"[^{re.escape(sep)}]" if sep else "."
    out, i, depth, n = [], 0, 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append(any_one + "*")
        elif c == "?":
            out.append(any_one)
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                raise _CmdError(f"invalid glob {pattern!r}: unclosed '['")
            body = pattern[i + 1 : j]
            neg = body.startswith("!")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\").replace("^", "\\^") + "]")
            i = j
        elif c == "{":
            out.append("(?:")
            depth += 1
        elif c == "}" and depth:
            out.append(")")
            depth -= 1
        elif c == "," and depth:
            out.append("|")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise _CmdError(f"invalid glob {pattern!r}: unclosed '{{'")
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as e:
        raise _CmdError(f"invalid glob {pattern!r}: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# Per-host structure and the Table.


def _len_key(path: str) -> tuple[int, int]:
    """Where ``path``'s second ``/`` is (-1: none) and its length: the prefix matcher's index key.

    A route ``P`` is a string prefix of a request path ``R`` only if ``P``'s second ``/`` (if any) is
    also ``R``'s, at the same place; without one ``P`` is no longer than ``R``'s first segment.  So once
    ``R``'s second ``/`` is found, only the lengths that can still match are tried: one or two dict
    probes for ``/svc7/deep/path`` where plain longest-first would try every length of the host.  Fewer
    probes also mean fewer cache misses, which is what a lookup costs in a table of 60k routes.
    """
    return path.find("/", 1), len(path)


class _Host:
    """The routes of one raw table host, indexed for the table's matcher.

    ``prefix`` (the default) is maintained incrementally (a count of routes per :func:`_len_key` is
    copied and adjusted), and a host with one route (``urlprefix-host/``, the usual case) keeps it in
    ``only`` so its lookup touches no dict.  ``iprefix`` and ``glob`` rebuild their per-host index from
    the host's routes on every change of that host, which is O(routes of that host): fine for the usual
    per-host route counts.
    """

    # `only` and `only_path` first: right after the object header, in the cache line a lookup touches anyway
    __slots__ = ("only", "only_path", "routes", "shallow", "deep", "host", "lens", "ilookup", "ilengths",
                 "globs", "ntargets")

    def __init__(self, host: str, routes: dict[str, Route], lens: dict[tuple[int, int], int], matcher: str,
                 ntargets: int) -> None:
        self.host = host
        self.routes = routes
        self.lens = lens
        self.ntargets = ntargets
        self.only: Route | None = None
        self.only_path = ""
        self.shallow: tuple[int, ...] = ()
        self.deep: dict[int, tuple[int, ...]] = {}
        self.ilookup: dict[str, Route] | None = None
        self.ilengths: tuple[int, ...] = ()
        self.globs: tuple[tuple[re.Pattern[str], Route], ...] = ()
        if matcher == "prefix":
            if len(routes) == 1:  # match() needs no length index then
                (self.only_path, self.only), = routes.items()
                return
            deep: dict[int, list[int]] = {}
            for seg, ln in sorted(lens, reverse=True):
                deep.setdefault(seg, []).append(ln)
            self.shallow = tuple(deep.pop(-1, ()))
            self.deep = {seg: tuple(lns) for seg, lns in deep.items()}
        elif matcher == "iprefix":
            il: dict[str, Route] = {}
            for p in sorted(routes):  # ascending, so the reverse-lexicographic first one wins
                il[p.lower()] = routes[p]
            self.ilookup = il
            self.ilengths = tuple(sorted({len(p) for p in il}, reverse=True))
        elif matcher == "glob":
            self.globs = tuple((_route_regex(routes[p]), routes[p]) for p in sorted(routes, reverse=True))

    def match(self, path: str, matcher: str) -> Route | None:
        if matcher == "prefix":
            only = self.only
            if only is not None:
                return only if path.startswith(self.only_path) else None
            routes, n = self.routes, len(path)
            seg = path.find("/", 1)
            if seg < 0:
                seg = n
            elif self.deep:
                for ln in self.deep.get(seg, ()):
                    if ln <= n:
                        r = routes.get(path[:ln])
                        if r is not None:
                            return r
            for ln in self.shallow:
                if ln <= seg:
                    r = routes.get(path[:ln])
                    if r is not None:
                        return r
            return None
        if matcher == "iprefix":
            lp, il, n = path.lower(), self.ilookup, len(path)
            assert il is not None
            for ln in self.ilengths:
                if ln <= n:
                    r = il.get(lp[:ln])
                    if r is not None:
                        return r
            return None
        for rx, r in self.globs:
            if rx.fullmatch(path):
                return r
        return None


def _route_regex(r: Route) -> re.Pattern[str]:
    if r._regex is None:
        try:
            r._regex = glob_regex(r.path, "/")
        except _CmdError:
            r._regex = re.compile(re.escape(r.path))
    return r._regex


class _Index:
    """Host lookup for one of plain/TLS: exact hosts, ``*.suffix`` patterns by suffix, other globs."""

    __slots__ = ("exact", "wild", "general")

    def __init__(self) -> None:
        self.exact: dict[str, _Host | tuple[_Host, ...]] = {}  # a tuple only for ``h`` and ``h:80`` both
        self.wild: dict[str, tuple[_Host, ...]] = {}
        self.general: tuple[tuple[int, re.Pattern[str], _Host], ...] = ()

    def copy(self) -> _Index:
        c = _Index()
        # .copy(), not dict(): CPython clones a dict with a few deleted slots in one memcpy only via .copy();
        # dict() re-inserts every key then (0.3 ms per 10,000), and the next insert resizes the result
        c.exact, c.wild, c.general = self.exact.copy(), self.wild.copy(), self.general
        return c

    def refresh(self, hosts: dict[str, _Host], raw: str, tls: bool, glob: bool) -> None:
        """Recompute the entries that the raw host ``raw`` feeds into after it changed."""
        port = ":443" if tls else ":80"
        norm = raw[: -len(port)] if raw.endswith(port) else raw
        a, b = hosts.get(norm), hosts.get(norm + port)
        # the host written with the listener's default port first, as fabio orders them (its reversed-text
        # sort puts `example.com:80` before `example.com`): the usual HTTP->HTTPS redirect `example.com:80/`
        # then wins over a plain `example.com/` route (fabio #656), with glob matching on and off alike
        cands = ((b, a) if a else (b,)) if b else (a,) if a else ()
        if glob and not _GLOB_CHARS.isdisjoint(norm):
            rest = norm[1:]
            if norm[0] == "*" and (not rest or rest[0] == ".") and _GLOB_CHARS.isdisjoint(rest):
                _set(self.wild, rest, cands)
            else:
                keep = [g for g in self.general if g[2].host != raw]
                if raw in hosts:
                    try:
                        keep.append((len(norm), glob_regex(norm, None), hosts[raw]))
                    except _CmdError:
                        pass
                self.general = tuple(keep)
        elif cands:
            self.exact[norm] = cands if len(cands) > 1 else cands[0]  # a bare _Host: one object less per lookup
        else:
            self.exact.pop(norm, None)

    def candidates(self, h: str, glob: bool, skip_exact: bool = False) -> Iterable[_Host]:
        """Hosts to try for request host ``h`` (normalised), most specific first; "" not included."""
        if not skip_exact:
            e = self.exact.get(h, ())
            yield from (e if type(e) is tuple else (e,))
        if not glob:
            return
        wild, general = self.wild, self.general
        if not general:
            i = h.find(".")
            while i >= 0:
                yield from wild.get(h[i:], ())
                i = h.find(".", i + 1)
            yield from wild.get("", ())
            return
        found: list[tuple[int, str, _Host]] = []
        i = h.find(".")
        while i >= 0:
            found += [(len(h) - i + 1, hr.host, hr) for hr in wild.get(h[i:], ())]
            i = h.find(".", i + 1)
        found += [(1, hr.host, hr) for hr in wild.get("", ())]
        found += [(ln, hr.host, hr) for ln, rx, hr in general if rx.fullmatch(h)]
        found.sort(key=lambda f: (f[0], f[1]), reverse=True)
        for f in found:
            yield f[2]


def _set(d: dict[str, tuple[_Host, ...]], key: str, val: tuple[_Host, ...]) -> None:
    if val:
        d[key] = val
    else:
        d.pop(key, None)


class Table:
    """An immutable routing table.  Build it with :class:`TableBuilder`."""

    __slots__ = ("_hosts", "_plain", "_tls", "_nohost", "matcher", "glob_matching", "_len", "route_count")

    def __init__(self, matcher: str = "prefix", glob_matching: bool = True) -> None:
        self._hosts: dict[str, _Host] = {}
        self._plain = _Index()
        self._tls = _Index()
        self._nohost: _Host | None = None
        self.matcher = matcher
        self.glob_matching = glob_matching
        self._len = 0
        self.route_count = 0

    def __len__(self) -> int:
        return self._len

    def has_target(self, route: str, service: str, url: str) -> bool:
        """Whether `service`'s target `url` is on route `route` (host + path, the request counters' key):
        counters of targets that left the table are dropped (router/proxy/stats.py, `prune`)."""
        cut = route.find("/")
        host, path = (route, "") if cut < 0 else (route[:cut], route[cut:])
        h = self._hosts.get(host)
        r = h.routes.get(path) if h is not None else None
        return r is not None and any(t.url == url and t.service == service for t in r.targets)

    def lookup(self, host: str, path: str, *, tls: bool = False) -> Route | None:
        """Exact host, then longest wildcard host, then shorter ones, then routes without a host.

        Within a host the first path match in reverse-lexicographic order wins (longest prefix).
        """
        h = host.lower()
        if tls:
            if h.endswith(":443"):
                h = h[:-4]
        elif h.endswith(":80"):
            h = h[:-3]
        matcher = self.matcher
        idx = self._tls if tls else self._plain
        hr = idx.exact.get(h)
        if hr is not None:
            if type(hr) is _Host:
                only = hr.only  # inlined fast path of _Host.match: one route on the host (prefix matcher)
                if only is not None:
                    if path.startswith(hr.only_path):
                        return only
                else:
                    r = hr.match(path, matcher)
                    if r is not None:
                        return r
            else:
                for x in hr:
                    r = x.match(path, matcher)
                    if r is not None:
                        return r
        if self.glob_matching and (idx.wild or idx.general):
            # inlined fast path of _Index.candidates: suffixes at each '.', longest first, then "*"
            if idx.general:
                hosts: Iterable[_Host] = idx.candidates(h, True, skip_exact=True)
            else:
                wild, found = idx.wild, []
                i = h.find(".")
                while i >= 0:
                    hrs = wild.get(h[i:])
                    if hrs:
                        found += hrs
                    i = h.find(".", i + 1)
                found += wild.get("", ())
                hosts = found
            for hr in hosts:
                r = hr.match(path, matcher)
                if r is not None:
                    return r
        if self._nohost is not None:
            return self._nohost.match(path, matcher)
        return None

    def lookup_host(self, host: str) -> Route | None:
        """fabio's `LookupHost` for TCP and SNI routes: exactly this table host (`:3306`, `db.example.com`),
        its first route that prefix-matches "/"; no wildcards, no fallback to routes without a host."""
        h = self._hosts.get(host.lower())
        return h.match("/", "prefix") if h is not None else None

    def lookup_all(self, host: str, path: str, *, tls: bool = False) -> Iterable[Route]:
        """Every host's first path match, in :meth:`lookup` order (the redirect-loop guard's slow path)."""
        h = host.lower()
        if tls and h.endswith(":443"):
            h = h[:-4]
        elif not tls and h.endswith(":80"):
            h = h[:-3]
        idx = self._tls if tls else self._plain
        hosts = list(idx.candidates(h, self.glob_matching))
        if self._nohost is not None:
            hosts.append(self._nohost)
        for hr in hosts:
            r = hr.match(path, self.matcher)
            if r is not None:
                yield r

    def _sorted_routes(self, reverse_hosts: bool) -> Iterable[Route]:
        hosts = sorted(self._hosts, reverse=reverse_hosts)
        if reverse_hosts and "" in self._hosts:
            hosts.remove("")
            hosts.append("")
        for h in hosts:
            routes = self._hosts[h].routes
            for p in sorted(routes, reverse=True):
                yield routes[p]

    def iter_targets(self) -> Iterable[Target]:
        """Every target of every route (used for `register=` aliases)."""
        for r in self._sorted_routes(False):
            yield from r.targets

    def routes(self) -> list[dict]:
        """Rows of fabio's /api/routes: hosts ascending ("" first), paths reverse-lexicographic."""
        rows = []
        for r in self._sorted_routes(False):
            for t in r.targets:
                row = {"service": t.service, "host": r.host, "path": r.path, "src": r.host + r.path,
                       "dst": t.url, "opts": _opts_text(t.opts), "cmd": "route add"}
                if t.tags:
                    row["tags"] = list(t.tags)
                if t.policy is not None:
                    row["policies"] = describe(t.policy, r.policy)
                row.update(weight=t.weight, rate1=0, pct99=0)
                rows.append(row)
        return rows

    def render(self) -> str:
        """fabio's Table.String(): hosts descending ("" last), one ``route add`` line per live target."""
        lines = []
        for r in self._sorted_routes(True):
            for t in r.targets:
                if t.weight <= 0:
                    continue
                s = f"route add {t.service} {r.host}{r.path} {t.url}"
                if t.fixed_weight > 0:
                    s += f" weight {t.fixed_weight:.4f}"
                if t.tags:
                    s += ' tags "{}"'.format(",".join(t.tags))
                if t.opts:
                    s += f' opts "{_opts_text(t.opts)}"'
                lines.append(s)
        return "".join(line + "\n" for line in lines)

    def dump(self) -> str:
        """The tree of fabio's ``log.routes.format=detail`` (its Table.Dump), character for character: hosts
        ascending, their paths, each target's address, weight and the slots fabio's rr ring gives it (one
        per target when no target has a fixed weight, else ``int(10000*w)``, at least 1; our pickers need
        no ring, so these are what fabio would allocate)."""
        out: list[str] = []
        hosts = sorted(self._hosts)
        for i, h in enumerate(hosts):
            out.append(f"+-- host={h}")
            stem = "    " if i == len(hosts) - 1 else "|   "
            routes = self._hosts[h].routes
            paths = sorted(routes, reverse=True)
            for j, p in enumerate(paths):
                last_path = j == len(paths) - 1
                out.append(f"{stem}{'+-- ' if last_path else '|-- '}path={p}")
                targets = routes[p].targets
                if any(t.fixed_weight > 0 for t in targets):
                    slots = [int(_FABIO_SLOTS * t.weight) or (1 if t.weight > 0 else 0) for t in targets]
                else:
                    slots = [1] * len(targets)
                total = sum(slots)
                for k, t in enumerate(targets):
                    branch = "+-- " if k == len(targets) - 1 else "|-- "
                    addr = t.url.split("://", 1)[-1].split("/", 1)[0]  # Go's url.Host: as written
                    out.append(f"{stem}{'    ' if last_path else '|    '}{branch}addr={addr} "
                               f"weight {t.weight:.2f} slots {slots[k]}/{total}")
        return "".join(line + "\n" for line in out)

    def services(self) -> set[str]:
        return {t.service for hr in self._hosts.values() for r in hr.routes.values() for t in r.targets}

    def hosts(self) -> list[str]:
        return sorted(self._hosts)


def _opts_text(opts: Mapping[str, str]) -> str:
    return " ".join(f"{k}={opts[k]}" for k in sorted(opts))


# ---------------------------------------------------------------------------------------------------------
# The builder.

Key = tuple[str, str]


def _check_glob(cmd: RouteCmd, matcher: str) -> None:
    """With the glob matcher a path that won't compile is an error of its command (as in fabio)."""
    if matcher == "glob":
        glob_regex(hostpath(cmd.src)[1], "/")


class _Manual:
    """The compiled override list: per-key commands, commands that apply to every key, and keys touched."""

    def __init__(self, cmds: Sequence[RouteCmd], matcher: str = "prefix") -> None:
        self.cmds = tuple(cmds)
        self.errors: list[LineError] = []
        self.by_key: dict[Key, list[tuple[int, RouteCmd, Target | None]]] = {}
        self.every: list[tuple[int, RouteCmd, Target | None]] = []
        for i, cmd in enumerate(self.cmds):
            entry: tuple[int, RouteCmd, Target | None]
            if cmd.op == "add":
                try:
                    _check_glob(cmd, matcher)
                    entry = (i, cmd, make_target(cmd))
                except _CmdError as e:
                    self.errors.append(_err(cmd, str(e)))
                    continue
                self.by_key.setdefault(hostpath(cmd.src), []).append(entry)
            elif cmd.op == "del" and (cmd.tags or not cmd.src):
                if not cmd.tags and not cmd.service:
                    self.errors.append(_err(cmd, "route del needs a service or tags"))
                    continue
                self.every.append((i, cmd, None))
            elif cmd.op in ("del", "weight"):
                if not cmd.src:
                    self.errors.append(_err(cmd, "source must not be empty"))
                    continue
                self.by_key.setdefault(hostpath(cmd.src), []).append((i, cmd, None))
            else:
                self.errors.append(_err(cmd, f"unknown command {cmd.op!r}"))

    def apply(self, key: Key, targets: Sequence[Target], errors: list[LineError]) -> Sequence[Target]:
        """Apply the commands relevant to ``key`` in order; returns ``targets`` itself when none are."""
        own = self.by_key.get(key)
        if not own and not self.every:
            return targets
        seq = sorted((own or []) + self.every, key=lambda e: e[0]) if own and self.every else own or self.every
        targets = list(targets)
        for _, cmd, tgt in seq:
            if cmd.op == "add":
                assert tgt is not None
                if not any(_same(t, tgt) for t in targets):
                    targets.append(tgt)
            elif cmd.op == "del":
                targets = [t for t in targets if not _del_matches(cmd, t)]
            else:
                hits = [i for i, t in enumerate(targets) if (not cmd.service or t.service == cmd.service)
                        and set(cmd.tags).issubset(t.tags)]
                if not hits:
                    errors.append(_err(cmd, "no route matches"))
                    continue
                w = cmd.weight / len(hits)
                for i in hits:
                    targets[i] = _refixed(targets[i], w)
        return targets


def _service_order(contrib: Mapping[str, object]) -> list[str]:
    """Services of one route in fabio's order: its `route add <svc> ...` lines sorted in reverse.

    Service names have no spaces, so comparing two services' lines is comparing ``name + " "``.
    """
    return sorted(contrib, key=lambda n: n + " ", reverse=True)


def _same(a: Target, b: Target) -> bool:
    return a.service == b.service and a.url == b.url and a.fixed_weight == b.fixed_weight and a.tags == b.tags


def _del_matches(cmd: RouteCmd, t: Target) -> bool:
    if cmd.service and t.service != cmd.service:
        return False
    if cmd.tags:
        return set(cmd.tags).issubset(t.tags)
    return not cmd.dst or t.url == cmd.dst


class TableBuilder:
    """Keeps the commands per service and the override commands; builds Tables incrementally.

    State: ``_svc[name]`` = that service's compiled targets by route key; ``_contrib[key][name]`` = the
    same, indexed by key.  A key's base targets are the contributions of its services in service-name
    order (so the result doesn't depend on update order); then the manual list is applied to the key.
    ``update`` rebuilds only the keys of changed services (all keys when the manual list changed) and
    copies only the touched ``_Host`` objects; everything else is shared with the previous Table.

    ``update`` returns *all* current errors (every service's build errors and the manual list's), not
    only those caused by this call, so the caller can simply display them.
    """

    def __init__(self, *, matcher: str = "prefix", glob_matching: bool = True) -> None:
        if matcher not in ("prefix", "iprefix", "glob"):
            raise ValueError(f"unknown matcher {matcher!r}")
        self.matcher = matcher
        self.glob_matching = glob_matching
        self._cmds: dict[str, tuple[RouteCmd, ...]] = {}
        self._svc: dict[str, dict[Key, tuple[Target, ...]]] = {}
        self._svc_errors: dict[str, list[LineError]] = {}
        self._contrib: dict[Key, dict[str, tuple[Target, ...]]] = {}
        self._manual = _Manual(())
        self._manual_key_errors: dict[Key, list[LineError]] = {}
        self._table = Table(matcher, glob_matching)

    @property
    def table(self) -> Table:
        return self._table

    def update(self, services: Mapping[str, Sequence[RouteCmd] | None] | None = None,
               manual: Sequence[RouteCmd] | None = None) -> tuple[Table, list[LineError]]:
        """Apply changed services (name -> full add list; None/[] = gone) and/or a new manual list.

        The garbage collector is paused meanwhile: a build allocates many objects but no cycles, and
        generation-2 collections over a large live table would otherwise dominate the build time.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._update(services, manual)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _update(self, services: Mapping[str, Sequence[RouteCmd] | None] | None,
                manual: Sequence[RouteCmd] | None) -> tuple[Table, list[LineError]]:
        affected: set[Key] = set()
        for name, cmds in (services or {}).items():
            new = tuple(cmds or ())
            if self._cmds.get(name, ()) == new and (name in self._cmds or not new):
                continue
            affected.update(self._set_service(name, new))
        full = False
        if manual is not None and tuple(manual) != self._manual.cmds:
            self._manual = _Manual(manual, self.matcher)
            full = True
        if full:
            affected = set(self._contrib) | set(self._manual.by_key)
            self._manual_key_errors = {}
            self._table = self._rebuild(Table(self.matcher, self.glob_matching), affected, fresh=True)
        elif affected:
            self._table = self._rebuild(self._table, affected, fresh=False)
        return self._table, self.errors()

    def errors(self) -> list[LineError]:
        out = [e for name in sorted(self._svc_errors) for e in self._svc_errors[name]]
        manual = list(self._manual.errors)
        for errs in self._manual_key_errors.values():
            manual += errs
        manual.sort(key=lambda e: (e.source, e.line))
        return out + manual

    def _set_service(self, name: str, cmds: tuple[RouteCmd, ...]) -> set[Key]:
        old = self._svc.pop(name, {})
        for key in old:
            c = self._contrib[key]
            del c[name]
            if not c:
                del self._contrib[key]
        self._svc_errors.pop(name, None)
        if not cmds:
            self._cmds.pop(name, None)
            return set(old)
        self._cmds[name] = cmds
        # Group by key in fabio's order (it adds the service lines sorted in reverse, so a route's targets
        # are in descending order of their `route add` text), de-duplicating on fabio's identity (service,
        # url, fixed weight, tags): the first in that order is kept.
        grouped: dict[Key, list[RouteCmd]] = {}
        errors: list[LineError] = []
        for cmd in cmds:
            if cmd.op != "add":
                errors.append(_err(cmd, "only 'route add' is allowed in service commands"))
                continue
            try:
                _check_glob(cmd, self.matcher)
            except _CmdError as e:
                errors.append(_err(cmd, str(e)))
                continue
            grouped.setdefault(hostpath(cmd.src), []).append(cmd)
        # The same instance usually appears on several routes: compile each distinct target once and share
        # the (immutable) Target objects between routes.  A line that does not compile is reported and left
        # out *before* de-duplication, so it never displaces a valid twin.  Weights are computed as if the
        # service were alone on the key, which is the common case and then needs no copies at rebuild time.
        compiled: dict[tuple, Target | str] = {}
        new: dict[Key, tuple[Target, ...]] = {}
        for key, group in grouped.items():
            if len(group) > 1:
                group.sort(key=str, reverse=True)
            kept: dict[tuple, Target] = {}
            for cmd in group:
                ident = (cmd.service, cmd.dst, cmd.weight, cmd.tags)
                ck = (ident, cmd.opts)
                t = compiled.get(ck)
                if t is None:
                    try:
                        t = make_target(cmd)
                    except _CmdError as e:
                        t = str(e)
                    compiled[ck] = t
                if isinstance(t, str):
                    errors.append(_err(cmd, t))
                else:
                    kept.setdefault(ident, t)
            ts = list(kept.values())
            if len(ts) == 1:
                new[key] = (ts[0],)  # compiled with weight 1.0, which is what a lone target gets
            elif ts:
                ws = _weights([t.fixed_weight for t in ts])
                out = []
                for t, w in zip(ts, ws, strict=True):
                    if t.weight != w:
                        ck = (id(t), w)
                        rt = compiled.get(ck)
                        if rt is None:
                            rt = compiled[ck] = _reweighted(t, w)
                        t = rt  # type: ignore[assignment]
                    out.append(t)
                new[key] = tuple(out)
        self._svc[name] = new
        if errors:
            self._svc_errors[name] = errors
        for key, ts in new.items():
            self._contrib.setdefault(key, {})[name] = ts
        return set(old) | set(new)

    def _targets(self, key: Key, errors: list[LineError]) -> tuple[Target, ...]:
        c = self._contrib.get(key)
        if not c:
            base: Sequence[Target] = ()
        elif len(c) == 1:
            (base,) = c.values()  # already weighed as a lone service
        else:
            base = [t for name in _service_order(c) for t in c[name]]
        out = self._manual.apply(key, base, errors)
        if out is base and len(c or ()) == 1:
            return out  # type: ignore[return-value]
        return _weigh(out) if out else ()

    def _rebuild(self, old: Table, affected: set[Key], fresh: bool) -> Table:
        by_host: dict[str, list[Key]] = {}
        for key in affected:
            by_host.setdefault(key[0], []).append(key)
        t = Table(self.matcher, self.glob_matching)
        if fresh:
            t._hosts, t._plain, t._tls = {}, _Index(), _Index()
        else:
            t._hosts, t._plain, t._tls = old._hosts.copy(), old._plain.copy(), old._tls.copy()  # see _Index.copy
        t._len, t.route_count = old._len, old.route_count
        key_errors = self._manual_key_errors
        contrib = self._contrib
        plain_only = not self._manual.by_key and not self._manual.every
        hosts, matcher, glob = t._hosts, self.matcher, self.glob_matching
        errs: list[LineError] = []
        for h, keys in by_host.items():
            prev = hosts.get(h)
            if prev:
                routes, lens, ntargets = prev.routes.copy(), prev.lens.copy(), prev.ntargets
                t._len -= prev.ntargets
                t.route_count -= len(prev.routes)
            else:
                routes, lens, ntargets = {}, {}, 0
            for key in keys:
                p = key[1]
                if plain_only:
                    c = contrib.get(key)
                    if not c:
                        targets: Sequence[Target] = ()
                    elif len(c) == 1:
                        (targets,) = c.values()
                    else:
                        targets = _weigh([x for name in _service_order(c) for x in c[name]])
                else:
                    targets = self._targets(key, errs)
                    if errs:
                        key_errors[key] = errs
                        errs = []
                    elif key_errors:
                        key_errors.pop(key, None)
                r = routes.get(p)
                if r is not None:
                    ntargets -= len(r.targets)
                if targets:
                    ntargets += len(targets)
                    if r is None:
                        routes[p] = Route(h, p, tuple(targets))
                        lk = _len_key(p)
                        lens[lk] = lens.get(lk, 0) + 1
                    elif r.targets != targets:
                        routes[p] = Route(h, p, tuple(targets))
                elif r is not None:
                    del routes[p]
                    lk = _len_key(p)
                    n = lens[lk] - 1
                    if n:
                        lens[lk] = n
                    else:
                        del lens[lk]
            if routes:
                hr = _Host(h, routes, lens, matcher, ntargets)
                hosts[h] = hr
                t._len += ntargets
                t.route_count += len(routes)
            else:
                hosts.pop(h, None)
            if h == "":
                t._nohost = hosts.get("")
            else:
                t._plain.refresh(hosts, h, False, glob)
                t._tls.refresh(hosts, h, True, glob)
        if not fresh and "" not in by_host:
            t._nohost = old._nohost
        return t
