"""Passive ejection: an instance that keeps refusing connections gets no traffic for a while.

Only connect failures count (refused, unreachable, connect timeout): they are the one failure that says
"this instance is not there" without guessing about the application. After `failures` consecutive ones
the (host, port) is skipped by picks for `duration` seconds; then it is half-open: the next request may
go there, one success clears it, one more failure ejects it again. State is per (host, port), not per
route, because a dead instance is dead for every route that points at it.

The counters are plain ints read by ui/metrics.py at scrape time, so the hot path pays a dict lookup
only while something is failing (the dicts are empty otherwise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("router.proxy")

Key = tuple[str, int]


class Ejector:
    def __init__(self, failures: int = 3, duration: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures  # 0: never eject
        self.duration = duration
        self.clock = clock
        self._fails: dict[Key, int] = {}  # consecutive connect failures, only for targets that failed
        self._until: dict[Key, float] = {}  # ejected until (monotonic clock)
        self.connect_failures = 0  # totals, for /metrics
        self.retries = 0
        self.ejections = 0

    def ejected(self, target: Any) -> bool:
        """True while `target` sits out its ejection."""
        if not self._until:
            return False
        until = self._until.get((target.host, target.port))
        return until is not None and self.clock() < until

    def failed(self, target: Any) -> None:
        """A connect to `target` failed."""
        self.connect_failures += 1
        if self.failures <= 0:
            return
        key = (target.host, target.port)
        n = self._fails.get(key, 0) + 1
        self._fails[key] = n
        if n >= self.failures and not self.ejected(target):
            self._until[key] = self.clock() + self.duration
            self.ejections += 1
            log.warning("upstream %s:%s ejected for %.1fs after %d consecutive connect failures",
                        key[0], key[1], self.duration, n)

    def succeeded(self, target: Any) -> None:
        """A connect to `target` worked: forget its failures (this is how a half-open target comes back)."""
        if self._fails:
            key = (target.host, target.port)
            if self._fails.pop(key, None) is not None and self._until.pop(key, None) is not None:
                log.info("upstream %s:%s answers again; no longer ejected", key[0], key[1])

    def choose(self, route: Any, target: Any, strategy: str, tried: list | tuple = ()) -> Any:
        """`target` unless it is ejected and another untried, non-ejected target of the route exists."""
        if not self.ejected(target) and target not in tried:
            return target
        for _ in range(8):
            t = route.pick(strategy)
            if t is not None and t not in tried and not self.ejected(t):
                return t
        for t in route.targets:
            if t not in tried and t.weight > 0 and not self.ejected(t):
                return t
        return target  # every instance is ejected: still try one rather than fail without trying

    def ejected_targets(self) -> list[Key]:
        now = self.clock()
        return [k for k, until in self._until.items() if now < until]
