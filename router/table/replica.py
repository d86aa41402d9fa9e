"""A proxy worker's routing table: the main process's table, rebuilt from its resolved changes.

Why not a RouterState of its own: a worker that rebuilt its table from the route commands kept the
commands, the builder's per-service and per-key caches and the change log besides the table: 108 MB at
100,000 instances, against about 50 MB for the table alone, in each of `proxy.workers` processes (issue 18,
docs/benchmarks.md). The main process resolves every change once (router/table/builder.py) and sends the
changed keys' final targets; this assembles them with the builder's own function (router/table/assemble.py),
so the two tables are built by the same code. It has the two things the worker's proxy reads of a
RouterState: `table` and `on_swap`.

The first table at 100,000 instances arrives in parts of a few thousand routes: unpickled in one piece,
the transient objects of the whole frame lay between the table's own, and the worker kept 71 MB for a table
that holds 50 MB when it arrives in parts (a throwaway measurement; docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable

from router.table.assemble import Changes, assemble
from router.table.routes import Table


class TableReplica:
    def __init__(self, *, matcher: str = "prefix", glob_matching: bool = True) -> None:
        self.matcher = matcher
        self.glob_matching = glob_matching
        self.table: Table | None = None
        self.on_swap: list[Callable[[frozenset[str]], None]] = []
        self._pending: Table | None = None  # the parts of one update received so far

    @property
    def ready(self) -> bool:
        return self.table is not None

    def apply(self, changes: Changes, fresh: bool, left: frozenset[str], final: bool = True) -> Table:
        """The main process's table after one of its updates: `changes` on the current table (on none when
        `fresh`); `left`: the sources that update removed, for the swap listeners. A large update comes in
        parts (router/run/workers.py): each is assembled as it arrives, and only the `final` one swaps."""
        old = self._pending if self._pending is not None else None if fresh else self.table
        table = assemble(old, changes, self.matcher, self.glob_matching) if old is None or changes else old
        if not final:
            self._pending = table
            return table
        self._pending = None
        self.table = table
        for listener in self.on_swap:
            listener(left)
        return table
