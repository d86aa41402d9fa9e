"""When the proxy listeners open: after the first routing table, or after `registry.timeout` without one.

A proxy process that accepts connections before it has a table can only answer them 503 "routing table not
loaded yet". With `proxy.workers` > 1 every worker has its own SO_REUSEPORT socket and the kernel sends new
connections to every socket that listens, so one worker still waiting for its table (just started, or
restarted, or a second router during a rolling restart) would get its share of them. So every proxy
socket is bound at start (a port in use still stops the start at once) and listened on only once its
process has a table (router/listen/server.py `Listener.open`, router/run/edge.py `Edge.open`); until then
the kernel refuses connections, or hands them to the processes that do listen.

fabio opens its proxy listeners after the first table too, but exits when Consul has not answered within
`registry.timeout`. Here a router whose registry gives no table within `registry.timeout` (Consul down at
startup) opens its listeners anyway and says why in the log: a port that never opens looks like a dead
router to whatever checks it, and the registry keeps being retried behind it. Any table counts, an empty
one too (a Consul with no routed services), and so do static and file routes. `registry.timeout=0`
opens at once. docs/compat.md has the comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from router.table.state import RouterState

log = logging.getLogger("router")

TABLE, BOUND = "table", "bound"


class Gate:
    """Waits for the first table of `state` (or `bound` seconds) once; `wait()` says which came first."""

    def __init__(self, state: RouterState, bound: float) -> None:
        self.state = state
        self.bound = bound
        self._table = asyncio.Event()
        if state.table is not None:
            self._table.set()
        else:
            state.on_swap.append(self._swapped)

    def _swapped(self, _services: object) -> None:
        self._table.set()

    async def wait(self) -> str:
        """TABLE when the state has a table, BOUND when `bound` (> 0) passed first; 0 opens at once."""
        try:
            if not self._table.is_set() and self.bound > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._table.wait(), self.bound)
            return TABLE if self._table.is_set() else BOUND
        finally:  # on every way out: a swap hook left behind would run for every later table
            if self._swapped in self.state.on_swap:
                self.state.on_swap.remove(self._swapped)


def log_open(reason: str, state: RouterState, bound: float, last_error: Callable[[], str] = lambda: "") -> None:
    """One line that says why the proxy listeners open now."""
    if reason == TABLE:
        n = len(state.table) if state.table is not None else 0
        log.info("first routing table loaded (%d routes): the proxy listeners open", n)
    elif bound <= 0:
        log.warning("registry.timeout=0: the proxy listeners open before the first routing table; "
                    "requests get 503 until one loads")
    else:
        err = last_error()
        log.warning("no routing table after %gs (registry.timeout)%s: the proxy listeners open anyway; "
                    "requests get 503 until one loads, the registry is still retried",
                    bound, f"; last registry error: {err}" if err else "")
