"""The picker of one route: power of two choices over the instances' load, weights honoured.

A pick draws a weight group with its exact share, then picks inside the group: p2c compares two random
instances' `latency estimate x (requests in flight + 1)` (router/proxy/instance.py holds the estimate),
`rnd` and `rr` pick at random or in turn (fabio's strategies, with the same shares). Weights: a route's
targets are grouped by weight (`route weight ... weight 0.1 tags "canary"` makes two groups), so a 10%
canary gets 10% of the requests whatever the latencies, and load-awareness works among equals.

Hot path: one RoutePicker per Route, built on the route's first request (per table build). A pick is two
randrange, two cost evaluations and a compare; ejection costs nothing while nothing is ejected
(`Balancer.ejected` is 0) and one view rebuild per route per ejection change otherwise.
"""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from router.proxy.budget import RetryBudget
from router.proxy.instance import PENALTY, STALE

if TYPE_CHECKING:
    from router.proxy.balance import Balancer

FULL = -2  # pick(): every candidate is at proxy.maxinflight


def weight_groups(weights: Sequence[float]) -> tuple[tuple[tuple[int, ...], ...], list[float] | None]:
    """Indices grouped by equal weight (first-seen order) and the cumulative group weights (None: one group)."""
    by_w: dict[float, list[int]] = {}
    for i, w in enumerate(weights):
        by_w.setdefault(w, []).append(i)
    groups = tuple(tuple(g) for g in by_w.values())
    if len(groups) <= 1:
        return groups, None
    return groups, list(itertools.accumulate(weights[g[0]] * len(g) for g in groups))


class RoutePicker:
    """The picker of one Route: its live targets, their states, weight groups and the ejection view.

    Holds no reference to its Route (the Route holds it), so dropping a table frees both at once.
    """

    __slots__ = ("lb", "targets", "states", "budget", "est", "est_stamp", "answers", "_groups", "_cum", "_vgroups",
                 "_vcum", "_vepoch", "_vuntil", "_rr", "_ring", "keys")

    def __init__(self, lb: Balancer, targets: Sequence[Any], budget: RetryBudget,
                 ring: Sequence[Any] = ()) -> None:
        self.lb = lb
        pool = tuple(t for t in targets if t.weight > 0)
        self.targets = pool
        self.states = tuple(lb.state(t) for t in pool)
        # each target's upstream pool key (scheme, host, port, verify), made once here, not per try
        self.keys = tuple((t.scheme, t.host, t.port, not t.tls_skip_verify or t.scheme != "https") for t in pool)
        self.budget = budget
        self.est = 0.0  # peak-EWMA of the route's successful header latency (the per-try timeout's base)
        self.est_stamp = 0.0
        self.answers = 0  # successful answers seen (stalls are judged only after a few: attempts.STALL_SAMPLES)
        self._groups, self._cum = weight_groups([t.weight for t in pool])
        self._vgroups, self._vcum = self._groups, self._cum
        self._vepoch = -1
        self._vuntil = 0.0
        self._rr = [itertools.count() for _ in self._groups]
        # rr with unequal weights walks fabio's smooth weighted ring (the Route's), as indices
        ids = {id(t): i for i, t in enumerate(pool)}
        self._ring = tuple(ids[id(t)] for t in ring if id(t) in ids)

    def _view(self, now: float) -> tuple[tuple[tuple[int, ...], ...], list[float] | None]:
        """The groups without the instances skipped for ejection (bounded by EjectPolicy.cap)."""
        lb = self.lb
        if not lb.ejected:
            return self._groups, self._cum
        if self._vepoch == lb.epoch and now < self._vuntil:
            return self._vgroups, self._vcum
        skip = lb.policy.skipped(self.states, now, lb)
        self._vepoch, self._vuntil = lb.epoch, lb.policy.next_change(self.states, now)
        if not skip:
            self._vgroups, self._vcum = self._groups, self._cum
            return self._groups, self._cum
        groups, weights = [], []
        for g in self._groups:
            live = tuple(i for i in g if i not in skip)
            if live:
                groups.append(live)
                weights.append(self.targets[g[0]].weight * len(g))
        self._vgroups = tuple(groups)
        self._vcum = list(itertools.accumulate(weights)) if len(groups) > 1 else None
        return self._vgroups, self._vcum

    def pick(self, now: float, exclude: Sequence[int] = ()) -> int:
        """Index of the target for the next try: -1 none left, FULL every candidate at proxy.maxinflight."""
        groups, cum = self._view(now)
        if not groups:
            return -1
        if self._ring:
            return self._ring_pick(groups, exclude)
        gi = 0 if cum is None else min(bisect_right(cum, random.random() * cum[-1]), len(groups) - 1)
        g = groups[gi]
        lb = self.lb
        if exclude:
            if lb.strategy == "rr":  # the next in turn that was not tried yet (fabio's order, skipping)
                rr, n = self._rr[gi % len(self._rr)], len(g)
                for _ in range(n):
                    i = g[next(rr) % n]
                    if i not in exclude:
                        return i
                return self._fallback(groups, exclude)
            g = tuple(i for i in g if i not in exclude)
            if not g:
                return self._fallback(groups, exclude)
        n = len(g)
        if n == 1:
            i = g[0]
        elif lb.strategy == "p2c":
            a = random.randrange(n)
            b = random.randrange(n - 1)
            if b >= a:
                b += 1
            i, j = g[a], g[b]
            si, sj = self.states[i], self.states[j]
            tau = lb.tau
            stale = STALE * tau
            ci = si.ewma
            cold_i = not ci or now - si.stamp >= stale
            if cold_i:  # nothing recent: free, unless a probe is already on its way
                ci = PENALTY if si.probe_at and now - si.probe_at < stale else 0.0
            else:
                ci *= math.exp((si.stamp - now) / tau) * (si.outstanding + 1)
            cj = sj.ewma
            cold_j = not cj or now - sj.stamp >= stale
            if cold_j:
                cj = PENALTY if sj.probe_at and now - sj.probe_at < stale else 0.0
            else:
                cj *= math.exp((sj.stamp - now) / tau) * (sj.outstanding + 1)
            if cj < ci:
                i, cold_i = j, cold_j
            if cold_i:
                self.states[i].probe_at = now
        elif lb.strategy == "rr":
            i = g[next(self._rr[gi % len(self._rr)]) % n]
        else:
            i = g[random.randrange(n)]
        cap = lb.max_inflight
        if cap and self.states[i].outstanding >= cap:
            return self._least_loaded(groups, exclude, cap)
        return i

    def _ring_pick(self, groups: Sequence[Sequence[int]], exclude: Sequence[int]) -> int:
        ring, c, n = self._ring, self._rr[0], len(self._ring)
        if not exclude and groups is self._groups:
            i = ring[next(c) % n]
        else:
            ok = {i for g in groups for i in g}
            for _ in range(n):
                i = ring[next(c) % n]
                if i in ok and i not in exclude:
                    break
            else:
                return self._fallback(groups, exclude)
        cap = self.lb.max_inflight
        if cap and self.states[i].outstanding >= cap:
            return self._least_loaded(groups, exclude, cap)
        return i

    def _fallback(self, groups: Sequence[Sequence[int]], exclude: Sequence[int]) -> int:
        """Any untried instance: other groups first, then ejected ones (better a slow answer than none)."""
        for g in groups:
            for i in g:
                if i not in exclude:
                    return i
        for i in range(len(self.targets)):
            if i not in exclude:
                return i
        return -1

    def _least_loaded(self, groups: Sequence[Sequence[int]], exclude: Sequence[int], cap: int) -> int:
        """proxy.maxinflight: the instance with the fewest tries in flight, if any is below the cap."""
        best, load = FULL, cap
        for g in groups:
            for i in g:
                o = self.states[i].outstanding
                if o < load and i not in exclude:
                    best, load = i, o
        return best

    def index(self, target: Any) -> int:
        """The index of `target` (by identity, else equality); -1 if it is not a live target of the route."""
        for i, t in enumerate(self.targets):
            if t is target:
                return i
        for i, t in enumerate(self.targets):
            if t == target:
                return i
        return -1

    def observe_route(self, rtt: float, now: float, inv_tau: float) -> None:
        e = self.est
        if rtt >= e:
            self.est = rtt
        else:
            w = math.exp((self.est_stamp - now) * inv_tau)
            self.est = e * w + rtt * (1.0 - w)
        self.est_stamp = now
        self.answers += 1
