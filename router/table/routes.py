"""The routing table: built from route commands, immutable once returned, cheap to rebuild in part.

Why it looks like this (user-voice items 14-17):

* fabio re-sorted the table on every add and took minutes at 60k routes; it also matched glob hosts by
  walking every host.  Here the table is a dict ``raw host -> HostRoutes`` plus lookup indexes, so a lookup is
  O(labels in the host + distinct path lengths of that host), independent of the number of routes.
* A change to one service must not rebuild everything.  :class:`TableBuilder` keeps the compiled targets
  per service and per route key ``(host, path)``, and rebuilds only the keys a change touches.  Every
  manual (override) command affects route keys independently of each other (an ``add``, a ``del`` with a
  source and a ``weight`` touch one key; ``del <svc>`` and ``del tags`` are evaluated per key), so the
  manual list is simply re-applied to each rebuilt key, in order, after the service targets.  When the
  manual list itself changes every key is rebuilt (router/table/builder.py).
* New tables share the unchanged ``HostRoutes`` objects and ``Route`` objects with the previous one; a Table
  that has been returned is never mutated.
* fabio's 10,000-slot ring per route is replaced by pickers that need no memory for the common case of
  equal weights (router/table/route.py).

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

The parts, from the bottom: target.py (a command's destination compiled into a Target), route.py (Route
and its pickers), index.py (per-host routes, host index, globs), this module (the immutable Table and
its lookups, renderings and API rows) and builder.py (the manual overrides and the incremental
TableBuilder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from router.table.index import HostIndex, HostRoutes
from router.table.route import FABIO_SLOTS, Route
from router.table.routepolicy import describe
from router.table.target import Target

__all__ = ["Table"]


class Table:
    """An immutable routing table.  Build it with :class:`TableBuilder`."""

    __slots__ = ("_hosts", "_plain", "_tls", "_nohost", "matcher", "glob_matching", "_len", "route_count")

    def __init__(self, matcher: str = "prefix", glob_matching: bool = True) -> None:
        self._hosts: dict[str, HostRoutes] = {}
        self._plain = HostIndex()
        self._tls = HostIndex()
        self._nohost: HostRoutes | None = None
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
            if type(hr) is HostRoutes:
                only = hr.only  # inlined fast path of HostRoutes.match: one route on the host (prefix matcher)
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
            # inlined fast path of HostIndex.candidates: suffixes at each '.', longest first, then "*"
            if idx.general:
                hosts: Iterable[HostRoutes] = idx.candidates(h, True, skip_exact=True)
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
                    slots = [int(FABIO_SLOTS * t.weight) or (1 if t.weight > 0 else 0) for t in targets]
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

