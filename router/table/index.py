"""Host and path lookup structures of a Table: the routes of one host, the host index, glob matching.

Why (user-voice items 14-17): fabio re-sorted the table on every add and matched glob hosts by walking
every host. Here a Table (router/table/routes.py) is a dict `raw host -> HostRoutes` plus one HostIndex
per listener kind (plain, TLS), so a lookup is O(labels in the host + distinct path lengths of that
host), independent of the number of routes. Host precedence is exact host > longest `*.` wildcard >
shorter wildcard > "", other glob hosts by pattern length; with the `glob` matcher `*` stays within a
path segment and `**` crosses segments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from router.table.route import Route
from router.table.target import CmdError

_GLOB_CHARS = frozenset("*?[]{}\\")


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
                raise CmdError(f"invalid glob {pattern!r}: unclosed '['")
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
        raise CmdError(f"invalid glob {pattern!r}: unclosed '{{'")
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as e:
        raise CmdError(f"invalid glob {pattern!r}: {e}") from None


def len_key(path: str) -> tuple[int, int]:
    """Where ``path``'s second ``/`` is (-1: none) and its length: the prefix matcher's index key.

    A route ``P`` is a string prefix of a request path ``R`` only if ``P``'s second ``/`` (if any) is
    also ``R``'s, at the same place; without one ``P`` is no longer than ``R``'s first segment.  So once
    ``R``'s second ``/`` is found, only the lengths that can still match are tried: one or two dict
    probes for ``/svc7/deep/path`` where plain longest-first would try every length of the host.  Fewer
    probes also mean fewer cache misses, which is what a lookup costs in a table of 60k routes.
    """
    return path.find("/", 1), len(path)


class HostRoutes:
    """The routes of one raw table host, indexed for the table's matcher.

    ``prefix`` (the default) is maintained incrementally (a count of routes per :func:`len_key` is
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
        except CmdError:
            r._regex = re.compile(re.escape(r.path))
    return r._regex


class HostIndex:
    """Host lookup for one of plain/TLS: exact hosts, ``*.suffix`` patterns by suffix, other globs."""

    __slots__ = ("exact", "wild", "general")

    def __init__(self) -> None:
        self.exact: dict[str, HostRoutes | tuple[HostRoutes, ...]] = {}  # a tuple only for ``h`` and ``h:80`` both
        self.wild: dict[str, tuple[HostRoutes, ...]] = {}
        self.general: tuple[tuple[int, re.Pattern[str], HostRoutes], ...] = ()

    def copy(self) -> HostIndex:
        c = HostIndex()
        # .copy(), not dict(): CPython clones a dict with a few deleted slots in one memcpy only via .copy();
        # dict() re-inserts every key then (0.3 ms per 10,000), and the next insert resizes the result
        c.exact, c.wild, c.general = self.exact.copy(), self.wild.copy(), self.general
        return c

    def refresh(self, hosts: dict[str, HostRoutes], raw: str, tls: bool, glob: bool) -> None:
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
                    except CmdError:
                        pass
                self.general = tuple(keep)
        elif cands:
            self.exact[norm] = cands if len(cands) > 1 else cands[0]  # a bare HostRoutes: one object less per lookup
        else:
            self.exact.pop(norm, None)

    def candidates(self, h: str, glob: bool, skip_exact: bool = False) -> Iterable[HostRoutes]:
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
        found: list[tuple[int, str, HostRoutes]] = []
        i = h.find(".")
        while i >= 0:
            found += [(len(h) - i + 1, hr.host, hr) for hr in wild.get(h[i:], ())]
            i = h.find(".", i + 1)
        found += [(1, hr.host, hr) for hr in wild.get("", ())]
        found += [(ln, hr.host, hr) for ln, rx, hr in general if rx.fullmatch(h)]
        found.sort(key=lambda f: (f[0], f[1]), reverse=True)
        for f in found:
            yield f[2]


def _set(d: dict[str, tuple[HostRoutes, ...]], key: str, val: tuple[HostRoutes, ...]) -> None:
    if val:
        d[key] = val
    else:
        d.pop(key, None)
