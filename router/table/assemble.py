"""The next Table from the previous one and the final targets of the route keys that changed (pure).

Why a module of its own: TableBuilder (router/table/builder.py) resolves what each changed key routes to
(its services' targets in fabio's order, weighed, with the overrides applied) and assembles the next
Table here. A proxy worker (router/run/workers.py) receives only those resolved targets from the main
process and assembles its own Table with this same function, so it keeps no route commands and no
per-service caches of its own: at 100,000 instances those were more than half of a worker's memory
(issue 18; docs/benchmarks.md). One function for both means both tables are built by the same code.

Only the touched HostRoutes are copied; every other HostRoutes and Route is shared with the previous
Table, and a Route whose targets compare equal is kept (its picker state with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router.table.index import HostIndex, HostRoutes, len_key
from router.table.route import Route
from router.table.routes import Table
from router.table.target import Target

Key = tuple[str, str]  # (raw table host, path)
Changes = Mapping[Key, Sequence[Target]]  # the final targets of each changed key; empty: the route is gone


def assemble(old: Table | None, changes: Changes, matcher: str, glob_matching: bool) -> Table:
    """`old` with `changes` applied (None: a table of `changes` alone); `old` is not modified."""
    by_host: dict[str, list[Key]] = {}
    for key in changes:
        by_host.setdefault(key[0], []).append(key)
    t = Table(matcher, glob_matching)
    if old is None:
        t._hosts, t._plain, t._tls = {}, HostIndex(), HostIndex()
    else:
        t._hosts, t._plain, t._tls = old._hosts.copy(), old._plain.copy(), old._tls.copy()  # see HostIndex.copy
        t._len, t.route_count = old._len, old.route_count
    hosts = t._hosts
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
            targets = changes[key]
            r = routes.get(p)
            if r is not None:
                ntargets -= len(r.targets)
            if targets:
                ntargets += len(targets)
                if r is None:
                    routes[p] = Route(h, p, tuple(targets))
                    lk = len_key(p)
                    lens[lk] = lens.get(lk, 0) + 1
                elif r.targets != targets:
                    routes[p] = Route(h, p, tuple(targets))
            elif r is not None:
                del routes[p]
                lk = len_key(p)
                n = lens[lk] - 1
                if n:
                    lens[lk] = n
                else:
                    del lens[lk]
        if routes:
            hr = HostRoutes(h, routes, lens, matcher, ntargets)
            hosts[h] = hr
            t._len += ntargets
            t.route_count += len(routes)
        else:
            hosts.pop(h, None)
        if h == "":
            t._nohost = hosts.get("")
        else:
            t._plain.refresh(hosts, h, False, glob_matching)
            t._tls.refresh(hosts, h, True, glob_matching)
    if old is not None and "" not in by_host:
        t._nohost = old._nohost
    return t


def keyed(table: Table) -> dict[Key, tuple[Target, ...]]:
    """Every route of `table` as changes: what a worker started later assembles its first table from."""
    return {(h, p): r.targets for h, hr in table._hosts.items() for p, r in hr.routes.items()}
