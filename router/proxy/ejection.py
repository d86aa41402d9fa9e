"""Outlier ejection: an instance whose tries keep failing gets no traffic for a while, bounded.

What counts as a failure (Envoy's gateway errors plus 5xx answers): a connect that fails or loses a hedge
race, a connection that closes or resets before the response is complete, a try without headers within
its per-try timeout, a 5xx answer. After `failures` consecutive ones the instance is ejected for
`duration`, doubled for each ejection in a row without a success in between, up to `max_duration`
(fabio has no ejection; a fixed 10 s outlived the recovery of a restarted instance). When the time is up
the instance is tried again with one request at a time (router/proxy/balance.py starts it cold): one
success clears it, one more failure ejects it again, for longer.

Bounded (Envoy's max_ejection_percent): a route never has more than `max_share` of its instances (at least
one, when it has two or more) skipped for ejection; when more are ejected, the ones ejected last are
skipped and the others keep getting traffic, so when every instance is bad requests still go somewhere
(better a slow answer than none) instead of failing without trying.

Pure policy over router.proxy.instance.InstanceState; the Balancer does the bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class EjectPolicy:
    def __init__(self, failures: int = 3, duration: float = 1.0, max_duration: float = 2.0,
                 max_share: float = 0.5) -> None:
        self.failures = failures  # 0: never eject
        self.duration = duration
        self.max_duration = max(max_duration, duration)
        self.max_share = max_share

    def should_eject(self, st: Any, now: float) -> bool:
        return 0 < self.failures <= st.fails and st.until <= now

    def eject(self, st: Any, now: float, reason: str) -> float:
        """Eject `st` from `now`; returns for how long."""
        d = min(self.duration * (2 ** min(st.streak, 30)), self.max_duration)
        st.until = now + d
        st.reason = reason
        st.streak += 1
        st.ejections += 1
        return d

    def cap(self, n: int) -> int:
        """How many of a route's `n` instances may be skipped at once."""
        return 0 if n < 2 else max(1, int(n * self.max_share))

    def skipped(self, states: Sequence[Any], now: float, lb: Any) -> frozenset[int]:
        """Indices of `states` to skip now; readmits (`lb.readmit`) those whose ejection ran out."""
        out = []
        for i, s in enumerate(states):
            if s.until:
                if s.until > now:
                    out.append(i)
                else:
                    lb.readmit(s)
        cap = self.cap(len(states))
        if len(out) > cap:
            out.sort(key=lambda i: states[i].until, reverse=True)
            out = out[:cap]
        return frozenset(out)

    @staticmethod
    def next_change(states: Sequence[Any], now: float) -> float:
        """When the next ejection among these runs out (a view computed now holds until then)."""
        return min((s.until for s in states if s.until > now), default=float("inf"))
