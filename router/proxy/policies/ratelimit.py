"""Per-route rate limits: a token bucket per route, or one per client address (``ratelimit=`` option).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; a request takes one token or
is answered 429 with ``Retry-After`` (whole seconds until a token is there, at least 1).

State lives in the worker process that serves the request. With ``proxy.workers`` = N each worker gets
``rate / N`` and ``burst / N`` (at least 1), so the router as a whole holds the configured rate when its
connections are spread over the workers (the kernel spreads new connections evenly, SO_REUSEPORT); a
single keep-alive connection stays on one worker and so sees rate / N. Several routers do not share
state: N routers behind a load balancer allow N times the rate (docs/operators.md).

Per-client buckets are kept in a dict bounded by MAX_CLIENTS: when it is full, buckets that have refilled
completely (their client has been quiet for burst/rate seconds) are dropped first, then the oldest half.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["Bucket", "Limiter", "MAX_CLIENTS"]

MAX_CLIENTS = 100_000


class Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now

    def take(self, rate: float, burst: float, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is there."""
        tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


class Limiter:
    """One route's (or one variant's) limit in this process, the configured figures divided by ``share``."""

    __slots__ = ("rate", "burst", "per_client", "bucket", "clients", "clock")

    def __init__(self, rate: float, burst: float, per_client: bool, share: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate / share
        self.burst = max(1.0, burst / share)
        self.per_client = per_client
        self.clock = clock
        self.bucket = Bucket(self.burst, clock())
        self.clients: dict[str, Bucket] = {}

    def check(self, client: str) -> float:
        """0.0 if the request may pass, else the seconds to wait (the Retry-After)."""
        now = self.clock()
        if not self.per_client:
            return self.bucket.take(self.rate, self.burst, now)
        b = self.clients.get(client)
        if b is None:
            if len(self.clients) >= MAX_CLIENTS:
                self._evict(now)
            b = self.clients[client] = Bucket(self.burst, now)
        return b.take(self.rate, self.burst, now)

    def _evict(self, now: float) -> None:
        full = self.burst / self.rate  # quiet this long: refilled, the same as a new bucket
        keep = {k: b for k, b in self.clients.items() if now - b.stamp < full}
        if len(keep) >= MAX_CLIENTS // 2:
            keep = dict(list(keep.items())[len(keep) // 2 :])  # insertion order: drop the older half
        self.clients = keep


def retry_after(wait: float) -> int:
    """Retry-After is whole seconds (RFC 9110 10.2.3); round up so a client that obeys it gets through."""
    return max(1, math.ceil(wait))
