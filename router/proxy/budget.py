"""Retry budget: retries (and hedges) may add at most a share of a service's live traffic.

Why a budget and not just an attempt count: with every instance of a service failing, "3 attempts per
request" triples the load on a service that is already down (a retry storm). Linkerd and Finagle cap
retries at a share of recent requests plus a small floor, so a lone failing request can still be retried
on a quiet route. Same here: over the last `window` seconds, retries <= floor * window + ratio * requests.

Cost per request: one int compare and two increments (the buckets rotate once a second), no allocation.
"""

from __future__ import annotations

WINDOW = 10  # seconds the budget looks back (ten one-second buckets)


class RetryBudget:
    __slots__ = ("ratio", "floor", "_sec", "_reqs", "_rets", "requests", "retries", "exhausted")

    def __init__(self, ratio: float = 0.2, floor: float = 10.0) -> None:
        self.ratio = ratio  # retries allowed per request in the window
        self.floor = floor * WINDOW  # retries per second always allowed, as a window total
        self._sec = 0
        self._reqs = [0] * WINDOW
        self._rets = [0] * WINDOW
        self.requests = 0  # sums over the window
        self.retries = 0
        self.exhausted = 0  # retries refused (a counter for /metrics; never reset)

    def _rotate(self, sec: int) -> None:
        """Move to second `sec`, emptying the buckets of the seconds that fell out of the window."""
        gap = sec - self._sec
        self._sec = sec
        if gap >= WINDOW or gap < 0:
            self._reqs = [0] * WINDOW
            self._rets = [0] * WINDOW
            self.requests = self.retries = 0
            return
        for s in range(sec - gap + 1, sec + 1):
            i = s % WINDOW
            self.requests -= self._reqs[i]
            self.retries -= self._rets[i]
            self._reqs[i] = self._rets[i] = 0

    def idle(self, now: float) -> bool:
        """Nothing happened within the window: the budget can be dropped and made anew, the same."""
        return int(now) - self._sec >= WINDOW

    def deposit(self, now: float) -> None:
        """One request arrived (at monotonic time `now`)."""
        sec = int(now)
        if sec != self._sec:
            self._rotate(sec)
        self._reqs[sec % WINDOW] += 1
        self.requests += 1

    def withdraw(self, now: float) -> bool:
        """Take one retry if the budget allows it; False (and counted as exhausted) if not."""
        sec = int(now)
        if sec != self._sec:
            self._rotate(sec)
        if self.retries >= self.floor + self.ratio * self.requests:
            self.exhausted += 1
            return False
        self._rets[sec % WINDOW] += 1
        self.retries += 1
        return True
