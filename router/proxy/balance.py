"""Per-instance state and the picker: power of two choices over a peak-EWMA load, weights honoured.

Why (issue 17): random and round robin keep sending their share to an instance that answers slowly,
fails fast or does not answer at all. Linkerd and Finagle pick two instances at random and send to the
one with the lower load, `latency estimate x (requests in flight + 1)`: a slow or stuck instance stops
getting traffic after a few requests, with no threshold to tune. The estimate is an EWMA weighted by
time (`proxy.lb.decay`), which decays while nothing is observed; one older than STALE decays is
forgotten, so an avoided instance gets a probe request now and then (one at a time: a cold instance with
a probe in flight costs PENALTY, until the probe is answered or as old as that) and a healed one is back
within seconds. A failed try is a *peak*:
the estimate jumps to at least FAILURE_RTT, so an instance that fails fast does not attract traffic.
Why not Linkerd's peak-EWMA for answers too: on this shared machine's noisy latencies it sent 5% of
the requests to an instance 10x slower, the time-weighted EWMA 0.6% (simulated, same seed), and the
p99 of all requests moves once that share passes 1%.

Weights: a route's targets are grouped by weight (`route weight ... weight 0.1 tags "canary"` makes two
groups); a group is drawn with its exact share, then p2c picks inside the group. So a 10% canary gets 10%
of the requests whatever the latencies, and load-awareness works among equals. `rnd` and `rr` pick
inside the group at random or in turn (fabio's strategies, with the same shares).

Failure state belongs to the instance (InstanceState), identified by its route command's source (the
Consul service instance: "service:<name>/<ID>") plus scheme, host and port, and shared by every route
pointing at it. States are held only by the pickers of live routes; the registry that finds them when a
picker is built is weak-valued, so an instance that leaves the table takes its failures with it, and a
new container on a freed address starts clean even when both changes arrive in one table build. The
weak values alone are not enough: a request in flight, or cyclic garbage the collector reaches only
seconds later (router/run/workers.py raises its thresholds), kept an old picker and its states alive, and
a container recreated under its name on the freed address (Registrator's ID is host:name:port, so the
same ID and address) got the old one's failures and ejection, found end to end with Docker. So every
table swap also drops the registry's states of the instances that left (`forget_left`).

Hot path: one RoutePicker per Route, built on the route's first request (per table build). A pick is two
randrange, two cost evaluations and a compare; ejection costs nothing while nothing is ejected
(`Balancer.ejected` is 0) and one view rebuild per route per ejection change otherwise.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
import weakref
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from router.proxy.budget import RetryBudget
from router.proxy.ejection import EjectPolicy

log = logging.getLogger("router.proxy")

PENALTY = 1e6  # cost of a cold instance with a probe in flight: it gets one probe at a time
FAILURE_RTT = 1.0  # a failed try counts as a latency of at least this (seconds)
STALE = 2.0  # an estimate older than this many proxy.lb.decay is forgotten: the instance is probed again
FULL = -2  # pick(): every candidate is at proxy.maxinflight


class InstanceState:
    """What one proxy process knows about one instance: load, latency estimate, failures, ejection."""

    __slots__ = ("key", "addr", "service", "outstanding", "ewma", "stamp", "probe_at", "fails", "until", "reason",
                 "streak", "ejections", "failures", "__weakref__")

    def __init__(self, key: tuple, addr: str, service: str) -> None:
        self.key = key
        self.addr = addr  # host:port, for logs and metrics
        self.service = service
        self.outstanding = 0  # tries in flight to it now (from this process)
        self.ewma = 0.0  # peak-EWMA of the time to response headers, seconds; 0 = cold (nothing recent)
        self.stamp = 0.0  # perf_counter of the last observation
        self.probe_at = 0.0  # when a request was sent to it while cold (0: no probe waiting for its answer)
        self.fails = 0  # consecutive failed tries
        self.until = 0.0  # ejected until (perf_counter); 0 = not ejected
        self.reason = ""  # why it was last ejected
        self.streak = 0  # ejections since its last success (each lasts twice as long)
        self.ejections = 0  # totals, for /metrics and /api/services
        self.failures = 0

    def observe(self, rtt: float, now: float, inv_tau: float) -> None:
        """Fold one answer's latency into the estimate: an EWMA weighted by the time since the last one, so
        an instance observed rarely moves at once and one observed often is smoothed."""
        e = self.ewma
        if e:
            w = math.exp((self.stamp - now) * inv_tau)
            self.ewma = e * w + rtt * (1.0 - w)
        else:
            self.ewma = rtt
        self.stamp = now
        self.probe_at = 0.0

    def penalise(self, rtt: float, now: float) -> None:
        """A failed try: the estimate jumps to at least `rtt` at once (a peak), so a failing instance that
        answers fast does not attract traffic."""
        if rtt > self.ewma:
            self.ewma = rtt
        self.stamp = now
        self.probe_at = 0.0

    def estimate(self, now: float, tau: float) -> float:
        """The latency estimate used for picking as of `now` (0: cold)."""
        e = self.ewma
        if not e or now - self.stamp >= STALE * tau:
            return 0.0
        return e * math.exp((self.stamp - now) / tau)

    def doc(self, now: float, tau: float) -> dict[str, Any]:
        """This instance's state for /api/services (ejected_until as wall-clock seconds)."""
        ejected = self.until > now
        return {
            "state": "ejected" if ejected else "healthy",
            "ejected_until": round(time.time() + (self.until - now), 3) if ejected else None,
            "reason": self.reason if ejected else "",
            "latency_ms": round(self.estimate(now, tau) * 1000, 3),
            "in_flight": self.outstanding,
            "consecutive_failures": self.fails,
            "failures": self.failures,
            "ejections": self.ejections,
        }


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

    __slots__ = ("lb", "targets", "states", "budget", "est", "est_stamp", "_groups", "_cum", "_vgroups",
                 "_vcum", "_vepoch", "_vuntil", "_rr", "_ring")

    def __init__(self, lb: Balancer, targets: Sequence[Any], budget: RetryBudget,
                 ring: Sequence[Any] = ()) -> None:
        self.lb = lb
        pool = tuple(t for t in targets if t.weight > 0)
        self.targets = pool
        self.states = tuple(lb.state(t) for t in pool)
        self.budget = budget
        self.est = 0.0  # peak-EWMA of the route's successful header latency (the per-try timeout's base)
        self.est_stamp = 0.0
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


class Balancer:
    """One proxy process's pickers, instance states, retry budgets and counters."""

    def __init__(self, strategy: str = "p2c", *, decay: float = 1.0, policy: EjectPolicy | None = None,
                 budget_ratio: float = 0.2, budget_floor: float = 10.0, max_inflight: int = 0) -> None:
        self.strategy = strategy
        self.tau = decay if decay > 0 else 1e-9
        self.inv_tau = 1.0 / self.tau
        self.policy = policy or EjectPolicy()
        self.budget_ratio, self.budget_floor = budget_ratio, budget_floor
        self.max_inflight = max_inflight  # 0: no per-instance cap
        self._states: weakref.WeakValueDictionary[tuple, InstanceState] = weakref.WeakValueDictionary()
        self._budgets: dict[str, RetryBudget] = {}  # per route key (host + path), outliving table builds
        self._budgets_floor = 1024
        self._budgets_limit = self._budgets_floor
        self.epoch = 0  # bumped on every ejection change, so pickers rebuild their view
        self.ejected = 0  # instances ejected now (counted down lazily, when a view sees the time is up)
        # totals, for /metrics
        self.connect_failures = 0
        self.retries = 0
        self.hedges = 0
        self.ejections = 0
        self.full = 0  # requests answered 503 because every instance was at proxy.maxinflight

    def picker(self, route: Any) -> RoutePicker:
        """The route's picker, built on its first request and kept on the Route (per table build)."""
        p = route.lb
        if p is None:
            key = route.host + route.path
            if len(self._budgets) > self._budgets_limit:
                self._prune_budgets()
            b = self._budgets.get(key)
            if b is None:
                b = self._budgets[key] = RetryBudget(self.budget_ratio, self.budget_floor)
            ring = route.ring() if self.strategy == "rr" else ()
            p = route.lb = RoutePicker(self, route.targets, b, ring)
        return p

    def _prune_budgets(self) -> None:
        """Drop the budgets of routes idle for a whole window (routes come and go with services), so the
        dict stays bounded; run only when it has doubled since the last pruning, O(routes) then."""
        now = time.perf_counter()
        self._budgets = {k: b for k, b in self._budgets.items() if not b.idle(now)}
        self._budgets_limit = max(self._budgets_floor, 2 * len(self._budgets))

    def state(self, target: Any) -> InstanceState:
        key = (target.source, target.scheme, target.host, target.port)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = InstanceState(key, f"{target.host}:{target.port}", target.service)
        return st

    def forget_left(self, services: Any) -> None:
        """After a table swap: drop the states of instances of the changed `services` (name -> their
        route commands, None/[] when gone) that are no longer among them, so that an instance coming back
        with the same ID and address is a new one. Pickers still in use keep theirs (they are not shared
        any more). O(states known) per swap that changed services; nothing on the request path."""
        if not self._states or not services:
            return
        prefixes = tuple(f"service:{name}/" for name in services)
        live = {c.source for cmds in services.values() for c in cmds or ()}
        for key in [k for k in list(self._states.keys()) if k[0].startswith(prefixes) and k[0] not in live]:
            self._states.pop(key, None)

    def states(self) -> list[InstanceState]:
        return list(self._states.values())

    @property
    def budget_exhausted(self) -> int:
        return sum(b.exhausted for b in self._budgets.values())

    # --- outcomes of tries
    def try_succeeded(self, st: InstanceState, rtt: float, now: float) -> None:
        st.observe(rtt, now, self.inv_tau)
        if st.fails:
            st.fails = 0
            st.streak = 0

    def try_failed(self, st: InstanceState, rtt: float, now: float, reason: str, connect: bool = False) -> None:
        st.failures += 1
        if connect:
            self.connect_failures += 1
        st.penalise(max(rtt, FAILURE_RTT), now)
        st.fails += 1
        if self.policy.should_eject(st, now):
            d = self.policy.eject(st, now, reason)
            self.ejected += 1
            self.epoch += 1
            self.ejections += 1
            log.warning("upstream %s (%s) ejected for %.1fs after %d consecutive failures: %s",
                        st.addr, st.service, d, st.fails, reason)

    def readmit(self, st: InstanceState) -> None:
        """An ejection ran out: the instance is tried again, cold (one request at a time)."""
        st.until = 0.0
        st.ewma = 0.0
        st.probe_at = 0.0
        st.fails = max(0, self.policy.failures - 1)  # one more failure ejects it again, for longer
        self.ejected = max(0, self.ejected - 1)
        self.epoch += 1

    def ejected_now(self) -> list[InstanceState]:
        now = time.perf_counter()
        return [s for s in self._states.values() if s.until > now]

    def instance_docs(self) -> dict[str, dict[str, Any]]:
        """Each known instance's state for /api/services, keyed "<source>|<host:port>" (see merge_docs)."""
        now = time.perf_counter()
        return {f"{s.key[0]}|{s.addr}": s.doc(now, self.tau) for s in self._states.values()}

    # --- the interface router/proxy/websocket.py uses (by target)
    def ejected_targets(self) -> list[tuple[str, int]]:
        return sorted({(s.key[2], s.key[3]) for s in self.ejected_now()})

    def choose(self, route: Any, target: Any, strategy: str = "", tried: Sequence[Any] = ()) -> Any:
        """A target of `route` for a try: `target` unless it is skipped for ejection or already tried."""
        p = self.picker(route)
        exclude = [i for i in (p.index(t) for t in tried) if i >= 0]
        i = p.index(target)
        if i >= 0 and i not in exclude and not p.states[i].until > time.perf_counter():
            return target
        j = p.pick(time.perf_counter(), exclude)
        return p.targets[j] if j >= 0 else target

    def succeeded(self, target: Any) -> None:
        st = self.state(target)  # a tunnel's latency says nothing about requests: only the failures reset
        if st.fails:
            st.fails = 0
            st.streak = 0

    def failed(self, target: Any) -> None:
        now = time.perf_counter()
        self.try_failed(self.state(target), 0.0, now, "connect failed", connect=True)


def merge_docs(parts: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Several processes' instance_docs as one: counts summed, the highest latency estimate, ejected if
    any process ejects it (until the latest time, with that process's reason)."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for key, d in part.items():
            m = out.get(key)
            if m is None:
                out[key] = dict(d)
                continue
            for k in ("in_flight", "failures", "ejections"):
                m[k] += d[k]
            m["latency_ms"] = max(m["latency_ms"], d["latency_ms"])
            m["consecutive_failures"] = max(m["consecutive_failures"], d["consecutive_failures"])
            if d["state"] == "ejected" and (m["state"] != "ejected" or d["ejected_until"] > m["ejected_until"]):
                m["state"], m["ejected_until"], m["reason"] = "ejected", d["ejected_until"], d["reason"]
    return out
