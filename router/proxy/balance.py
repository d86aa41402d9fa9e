"""One proxy process's load balancing: power of two choices over a peak-EWMA load, weights honoured.

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

The parts: router/proxy/instance.py (InstanceState, the estimate, merge_docs), router/proxy/picker.py
(RoutePicker: the weight groups and the pick) and this module's Balancer, which holds them: the
instance states by key (weak-valued), the retry budgets per route, the outcome of each try, ejection
and the counters for /metrics.

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
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Collection, Sequence
from typing import Any

from router.proxy.budget import RetryBudget
from router.proxy.ejection import EjectPolicy
from router.proxy.instance import FAILURE_RTT, InstanceState
from router.proxy.picker import RoutePicker

log = logging.getLogger("router.proxy")


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
        self.stalls = 0  # tries ended because their instance was stalled

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

    def forget_left(self, left: Collection[str]) -> None:
        """After a table swap: drop the states of the instances that `left` the table (their sources,
        router/table/state.py), so that an instance coming back with the same ID and address is a new one.
        Pickers still in use keep theirs (they are not shared any more). O(states known) per swap that
        removed instances; nothing on the request path."""
        if not self._states or not left:
            return
        for key in [k for k in self._states if k[0] in left]:
            self._states.pop(key, None)

    def states(self) -> list[InstanceState]:
        return list(self._states.values())

    @property
    def budget_exhausted(self) -> int:
        return sum(b.exhausted for b in self._budgets.values())

    # --- outcomes of tries
    def try_succeeded(self, st: InstanceState, rtt: float, now: float) -> None:
        """A try answered (below 500): InstanceState.answered, which Sender.send() calls itself."""
        st.answered(rtt, now, self.inv_tau)

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

    def stalled(self, st: InstanceState, now: float, reason: str, tries: int = 1) -> None:
        """`tries` waiting on `st` are ended because it is stalled (InstanceState.stalled): it is ejected at
        once, not after proxy.eject.failures more tries have waited for nothing (bounded as every ejection)."""
        self.stalls += tries
        if self.policy.failures and st.until <= now:
            d = self.policy.eject(st, now, reason)
            self.ejected += 1
            self.epoch += 1
            self.ejections += 1
            log.warning("upstream %s (%s) ejected for %.1fs: %s", st.addr, st.service, d, reason)

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
