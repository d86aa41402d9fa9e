"""Per-route request counters, cheap enough for the proxy's hot path.

Why plain slots and not prometheus_client metrics: a labelled prometheus metric costs a label-tuple
build and a dict lookup under a lock per `.labels()` call, several microseconds per request. Here the
proxy finds a :class:`RouteStats` through one dict lookup on the Route (attached lazily, see
:meth:`RequestStats.attach`) and bumps a few ints; ui/metrics.py turns the counters into Prometheus text
only when /metrics is scraped, and the routes page derives rate1/pct99 from the same counters.

Counters are keyed by (service, route, target) strings and outlive table rebuilds, so Prometheus counters
stay monotonic when the table changes; the key set is bounded by the routes the tables ever held (never
raw request paths). With proxy.workers > 1 each worker sends its changed counters to the main process
(router/run/workers.py), which sums them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

# Upper bounds (seconds) of the latency histogram; one more slot counts everything above (+Inf).
BOUNDS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
CLIENT_GONE = 499  # status recorded when the client left before a response (nginx's convention)

Key = tuple[str, str, str]  # (service, route = host+path, target URL)
# (requests, latency sum in seconds, per-bucket counts (not cumulative), per-class counts 1xx..5xx)
Snapshot = tuple[int, float, tuple[int, ...], tuple[int, ...]]


class RouteStats:
    """Counters of one (service, route, target): a handful of ints the proxy bumps per request."""

    __slots__ = ("key", "count", "sum", "buckets", "classes")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.classes = [0] * 6  # index status // 100; 0 is unused

    def record(self, status: int, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        c = status // 100
        self.classes[c if 0 < c < 6 else 5] += 1

    def snapshot(self) -> Snapshot:
        return self.count, self.sum, tuple(self.buckets), tuple(self.classes[1:])


class RequestStats:
    """Everything one proxy process counts: per-route stats plus a few process-wide counters."""

    def __init__(self) -> None:
        self.by_key: dict[Key, RouteStats] = {}
        self.noroute = 0
        self.websockets_open = 0
        self.websockets_total = 0
        self._sent: dict[Key, int] = {}

    def attach(self, route: Any, target: Any) -> RouteStats:
        """The stats of (route, target), remembered on the Route so the next request finds them in one
        dict lookup; called on a Route's first request for that target (routes are rebuilt per table)."""
        url = target.url if target is not None else ""
        service = target.service if target is not None else ""
        key = (service, route.host + route.path, url)
        rs = self.by_key.get(key)
        if rs is None:
            rs = self.by_key[key] = RouteStats(key)
        if route.stats is None:
            route.stats = {}
        route.stats[url] = rs
        return rs

    def snapshots(self) -> dict[Key, Snapshot]:
        return {k: rs.snapshot() for k, rs in self.by_key.items()}

    def prune(self, table: Any) -> None:
        prune(self.by_key, table)
        prune(self._sent, table)

    def changed(self) -> dict[Key, Snapshot]:
        """Snapshots of the keys that saw requests since the last call (a worker's report to the main)."""
        out = {}
        for k, rs in self.by_key.items():
            if self._sent.get(k) != rs.count:
                self._sent[k] = rs.count
                out[k] = rs.snapshot()
        return out


def prune(counters: dict[Key, Any], table: Any) -> None:
    """Drop the counters of targets that are no longer in `table`, as fabio drops their metrics: with
    instances coming and going (new container addresses) the series would otherwise grow without bound.
    O(counters), so it runs when counters are read or every minute, never per table swap or request."""
    if table is None:
        return
    for key in [k for k in counters if not table.has_target(k[1], k[0], k[2])]:
        del counters[key]


def merge(parts: Iterable[Mapping[Key, Snapshot]]) -> dict[Key, Snapshot]:
    """Sum per-key snapshots of several processes."""
    out: dict[Key, Snapshot] = {}
    for part in parts:
        for k, (n, s, b, c) in part.items():
            if k in out:
                n0, s0, b0, c0 = out[k]
                out[k] = (n0 + n, s0 + s, tuple(map(int.__add__, b0, b)), tuple(map(int.__add__, c0, c)))
            else:
                out[k] = (n, s, b, c)
    return out


def quantile(q: float, buckets: tuple[int, ...]) -> float:
    """The q-quantile (seconds) of non-cumulative bucket counts, linear within a bucket (as Prometheus'
    histogram_quantile does); the +Inf bucket answers the last finite bound. 0 when there is no data."""
    total = sum(buckets)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(BOUNDS):
                return BOUNDS[-1]
            lo = BOUNDS[i - 1] if i else 0.0
            return lo + (BOUNDS[i] - lo) * (rank - seen) / n
        seen += n
    return BOUNDS[-1]


class RateWindow:
    """rate1 and pct99 per key over about the last minute, from snapshots taken every few seconds.

    Why snapshots: the counters only ever grow, so the difference between now and a snapshot ~60 s old
    gives both the request rate and the latency buckets of that minute without any per-request work.
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.history: deque[tuple[float, dict[Key, Snapshot]]] = deque()

    def tick(self, now_counts: dict[Key, Snapshot], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.history.append((now, now_counts))
        while len(self.history) > 1 and now - self.history[1][0] >= self.window:
            self.history.popleft()

    def rates(self, current: dict[Key, Snapshot], now: float | None = None) -> dict[Key, tuple[float, float]]:
        """key -> (requests per second, p99 in milliseconds) since the oldest kept snapshot."""
        now = time.monotonic() if now is None else now
        if not self.history:
            return {}
        t0, base = self.history[0]
        span = max(now - t0, 1e-3)
        out = {}
        for k, (n, _, b, _) in current.items():
            old = base.get(k)
            dn = n - (old[0] if old else 0)
            if dn <= 0:
                continue
            db = tuple(x - y for x, y in zip(b, old[2], strict=True)) if old else b
            out[k] = (dn / span, quantile(0.99, db) * 1000.0)
        return out


def proxy_counters(proxy: Any) -> dict[str, int]:
    """The process-wide counters of one proxy (ProxyApp), by name; the main process sums the workers'."""
    st, ej = proxy.stats, proxy.ejector
    return {"noroute": st.noroute, "websockets_open": st.websockets_open, "websockets_total": st.websockets_total,
            "connect_failures": ej.connect_failures, "retries": ej.retries, "ejections": ej.ejections,
            "hedges": ej.hedges, "budget_exhausted": ej.budget_exhausted, "inflight_full": ej.full, "stalls": ej.stalls,
            **proxy.policies.counters.as_dict()}
