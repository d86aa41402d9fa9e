"""The router's current table: built from registry changes, swapped atomically.

A registry calls `apply` with what changed; the new immutable Table replaces the old one in a single
reference assignment, so a request in flight keeps the table it started with and the next one sees
the new table. Errors from the last build and a short history of changes are kept for the UI.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from router.table.builder import TableBuilder
from router.table.routecmd import LineError, RouteCmd
from router.table.routes import Table

log = logging.getLogger("router.table")



def _left(before: list[tuple[str, Sequence[RouteCmd]]], services: Mapping[str, Sequence[RouteCmd] | None]) -> frozenset[str]:
    """The sources of `before` (changed services' commands before the update) that `services` no longer has.
    A set, not the services' commands, is what the swap listeners get: a proxy worker gets it over its
    pipe (router/run/workers.py), and at startup it is empty however many services arrive."""
    out: set[str] = set()
    for name, old in before:
        now = {c.source for c in services[name] or ()}
        out.update(c.source for c in old if c.source not in now)
    return frozenset(out)

ALL_LIMIT = 10_000  # log.routes.format=all renders the whole table only up to this many routes


@dataclass(frozen=True, slots=True)
class Swap:
    at: float  # wall time of the swap
    services: int  # services changed
    manual: bool  # overrides changed
    build_ms: float
    routes: int


class RouterState:
    def __init__(self, *, matcher: str = "prefix", glob_matching: bool = True, routes_log: str = "delta") -> None:
        self.builder = TableBuilder(matcher=matcher, glob_matching=glob_matching)
        self.table: Table | None = None
        self.errors: list[LineError] = []
        self.history: deque[Swap] = deque(maxlen=100)
        self.routes_log = routes_log
        self.started = time.time()
        # per service its commands' lines as last logged; a service's first commands are kept as RouteCmds and
        # rendered when it changes next (100,000 str() calls cost 0.3-0.6 s of the first build at startup)
        self._lines: dict[str, tuple[str | RouteCmd, ...]] = {}
        # Called after each swap with the sources (instances, "service:<name>/<ID>") that left the changed
        # services' commands (the proxy forgets their instance states: router/proxy/balance.py,
        # Balancer.forget_left). A proxy worker's TableReplica calls its own with the same set.
        self.on_swap: list[Callable[[frozenset[str]], None]] = []
        self.left: frozenset[str] = frozenset()  # the last update's

    @property
    def ready(self) -> bool:
        return self.table is not None

    def apply(
        self, services: Mapping[str, Sequence[RouteCmd] | None], manual: Sequence[RouteCmd] | None = None
    ) -> Table:
        t0 = time.perf_counter()
        before = [(name, old) for name in services if (old := self.builder.commands(name))]
        table, errors = self.builder.update(services, manual)
        ms = (time.perf_counter() - t0) * 1000
        self.table = table
        self.left = left = _left(before, services)
        for listener in self.on_swap:
            listener(left)
        self.errors = list(errors)
        self.history.append(Swap(time.time(), len(services), manual is not None, ms, len(table)))
        for e in errors:
            log.warning("route rejected: %s", e)
        self._log_change(services, manual, table, ms)
        return table

    def _log_change(
        self,
        services: Mapping[str, Sequence[RouteCmd] | None],
        manual: Sequence[RouteCmd] | None,
        table: Table,
        ms: float,
    ) -> None:
        """Log what changed, at a cost proportional to the change (`delta`).

        `all` (fabio's route lines) and `detail` (its host/path/target tree, `Table.dump`) log the whole
        table instead while it has at most ALL_LIMIT entries (len(table)), and the changes above that; the
        per-service lines are kept in every mode, so the switch logs a true delta.
        """
        lines: list[str | RouteCmd] = []  # "- x" / "+ x" lines; a new service's commands, rendered only if shown
        changes = dict(services)
        if manual is not None:
            changes["\0manual"] = manual
        for key, cmds in changes.items():
            before = self._lines.get(key, ())
            if not before and cmds:  # a new service (the whole table at startup): kept as commands, see _text
                after: tuple[str | RouteCmd, ...] = tuple(cmds)
                self._lines[key] = after
                lines += after
                continue
            after = tuple(str(c) for c in cmds or ())
            if after:
                self._lines[key] = after
            else:
                self._lines.pop(key, None)
            before = tuple(map(str, before))
            before_set, after_set = set(before), set(after)
            lines += [f"- {x}" for x in before if x not in after_set]
            lines += [f"+ {x}" for x in after if x not in before_set]
        if self.routes_log in ("all", "detail") and len(table) <= ALL_LIMIT:
            text = table.render() if self.routes_log == "all" else table.dump()
            log.info("routing table (%d routes, built in %.1f ms):\n%s", len(table), ms, text)
            return
        if lines:
            shown = [x if isinstance(x, str) else f"+ {x}" for x in lines[:200]]
            if len(lines) > 200:
                shown.append(f"... and {len(lines) - 200} more")
            log.info("routing table changed (%d routes, built in %.1f ms):\n%s", len(table), ms, "\n".join(shown))
