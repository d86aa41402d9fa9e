"""One route (all targets of one `host + path`) and its pickers; fabio's target weighing.

fabio's 10,000-slot ring per route is replaced by pickers that need no memory for the common case of
equal weights (see :class:`Route`); `fabio_weights` is fabio's weighTargets (fixed shares, the rest split),
which the builder (router/table/builder.py) applies to each route's targets.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import random
import re
from collections.abc import Sequence

from router.table.routepolicy import route_policy
from router.table.target import Target, reweighted

_policy = operator.attrgetter("policy")
_weight = operator.attrgetter("weight")
_RING_MAX = 1000  # slots of the rr ring for unequal weights (fabio: 10,000 per route, always)
FABIO_SLOTS = 10000


class Route:
    """All targets for one ``host + path``, with the picker state.

    Pickers: with equal weights (the usual case) ``rnd`` picks from the target tuple and ``rr`` walks it
    with a per-route counter, so no ring is allocated.  With unequal weights ``rnd`` bisects a cumulative
    weight array and ``rr`` walks a smooth weighted ring whose slot counts follow fabio's
    ``int(10000*w)`` (at least 1), reduced by their gcd and scaled down towards ``_RING_MAX`` slots,
    but never so far that the smallest share would need less than one slot.
    Targets with weight 0 are never picked.
    """

    __slots__ = ("host", "path", "targets", "_pool", "_cum", "_ring", "_count", "_regex", "stats", "lb",
                 "policy")

    def __init__(self, host: str, path: str, targets: tuple[Target, ...], _variant: bool = False) -> None:
        self.stats: dict | None = None  # target URL -> router.stats.RouteStats, filled on first requests
        self.lb = None  # router.proxy.picker.RoutePicker, built on the first request (per table build)
        self.host = host
        self.path = path
        self.targets = targets
        self._cum: list[float] | None = None
        self._ring: tuple[Target, ...] | None = None
        self._count = itertools.count()
        self._regex: re.Pattern[str] | None = None
        self.policy = None  # router/table/routepolicy.py: header variants, rate limit, sticky; None for most
        # the checks over the targets run in C (map, count, set): a build makes one Route per route (issue 18)
        n = len(targets)
        if n == 1:
            plain = targets[0].policy is None
        else:
            plain = list(map(_policy, targets)).count(None) == n
            if plain and n and len(set(map(_weight, targets))) == 1:  # equal weights (the usual case)
                self._pool: tuple[Target, ...] = targets if targets[0].weight > 0 else ()
                return
        if not plain:
            self.policy = route_policy(targets, _variant, lambda g: Route(host, path, g, True))
            if self.policy is not None:
                targets = self.policy.default  # the pool: the targets without match=
        if len(targets) == 1:
            self._pool = targets if targets[0].weight > 0 else ()
            return
        live = tuple(t for t in targets if t.weight > 0)
        self._pool = live
        if len(live) > 1 and any(t.weight != live[0].weight for t in live):
            self._cum = list(itertools.accumulate(t.weight for t in live))

    def __repr__(self) -> str:
        return f"Route({self.host!r}, {self.path!r}, {len(self.targets)} targets)"

    def pick(self, strategy: str = "rnd") -> Target | None:
        pool = self._pool
        n = len(pool)
        if n <= 1:
            return pool[0] if n else None
        if self._cum is None:
            if strategy == "rr":
                return pool[next(self._count) % n]
            return pool[random.randrange(n)]
        if strategy == "rr":
            ring = self._ring or self._build_ring()
            return ring[next(self._count) % len(ring)]
        cum = self._cum
        i = bisect.bisect_right(cum, random.random() * cum[-1])
        return pool[min(i, n - 1)]

    def ring(self) -> tuple[Target, ...]:
        """The rr ring for unequal weights (empty with equal ones: then rr simply walks the targets)."""
        if self._cum is None:
            return ()
        return self._ring or self._build_ring()

    def _build_ring(self) -> tuple[Target, ...]:
        """Smooth weighted round robin over the reduced slot counts (built once, on the first rr pick)."""
        slots = [max(1, int(FABIO_SLOTS * t.weight)) for t in self._pool]
        g = math.gcd(*slots)
        slots = [s // g for s in slots]
        total = sum(slots)
        if total > _RING_MAX:
            # never scale the smallest share below one slot: with many targets (fabio's "more than 1000
            # routes" table row) that would round every small target up and starve the big one
            scale = max(_RING_MAX / total, 1 / min(slots))
            slots = [max(1, round(s * scale)) for s in slots]
            total = sum(slots)
        current = [0] * len(slots)
        ring = []
        for _ in range(total):
            for i, s in enumerate(slots):
                current[i] += s
            best = max(range(len(slots)), key=current.__getitem__)
            current[best] -= total
            ring.append(self._pool[best])
        self._ring = tuple(ring)
        return self._ring


def fabio_weights(fixed: Sequence[float]) -> list[float]:
    """fabio's weighTargets: fixed shares (scaled when they overflow, or fill everything), rest split."""
    n = len(fixed)
    if n == 1:
        return [1.0]  # whatever its fixed weight, a lone target gets everything (scaled by 1/sumFixed)
    sum_fixed = sum(f for f in fixed if f > 0)
    if sum_fixed <= 0:
        return [1.0 / n] * n
    n_dyn = sum(1 for f in fixed if f <= 0)
    scale = 1.0 / sum_fixed if sum_fixed > 1 or (n_dyn == 0 and sum_fixed < 1) else 1.0
    dyn = max(0.0, (1 - sum_fixed) / n_dyn) if n_dyn else 0.0
    return [f * scale if f > 0 else dyn for f in fixed]


def weigh(targets: Sequence[Target]) -> tuple[Target, ...]:
    ws = fabio_weights([t.fixed_weight for t in targets])
    return tuple(reweighted(t, w) for t, w in zip(targets, ws, strict=True))
