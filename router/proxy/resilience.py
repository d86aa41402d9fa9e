"""The knobs of issue 17's resilience (proxy.* keys) in one value, and the parts built from them.

Why one value: the proxy core (router/proxy/handler.py) takes a single `resilience=` argument and calls
two things, `Balancer.picker(route).pick(now)` and `Sender.send(...)`, so its own changes and these
merge without touching each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.proxy.attempts import Sender
from router.proxy.balance import Balancer
from router.proxy.ejection import EjectPolicy
from router.proxy.upstream import Upstream


@dataclass(frozen=True)
class Resilience:
    strategy: str = "p2c"  # proxy.strategy
    decay: float = 1.0  # proxy.lb.decay
    attempts: int = 3  # proxy.retry.attempts
    budget_ratio: float = 0.2  # proxy.retry.budget
    budget_floor: float = 10.0  # proxy.retry.budget.min
    per_try: float = 0.25  # proxy.retry.pertrytimeout
    buffer: int = 65536  # proxy.retry.buffer
    hedge_delay: float = 0.025  # proxy.hedge.delay
    eject_failures: int = 3  # proxy.eject.failures
    eject_duration: float = 1.0  # proxy.eject.duration
    eject_max_duration: float = 2.0  # proxy.eject.maxduration
    eject_max_share: float = 0.5  # proxy.eject.maxshare
    max_inflight: int = 0  # proxy.maxinflight
    stall: float = 1.0  # proxy.stall.timeout

    @classmethod
    def from_config(cls, cfg: Any) -> Resilience:
        return cls(strategy=cfg["proxy.strategy"], decay=cfg["proxy.lb.decay"], attempts=cfg["proxy.retry.attempts"],
                   budget_ratio=cfg["proxy.retry.budget"], budget_floor=cfg["proxy.retry.budget.min"],
                   per_try=cfg["proxy.retry.pertrytimeout"], buffer=cfg["proxy.retry.buffer"],
                   hedge_delay=cfg["proxy.hedge.delay"], eject_failures=cfg["proxy.eject.failures"],
                   eject_duration=cfg["proxy.eject.duration"], eject_max_duration=cfg["proxy.eject.maxduration"],
                   eject_max_share=cfg["proxy.eject.maxshare"], max_inflight=cfg["proxy.maxinflight"],
                   stall=cfg["proxy.stall.timeout"])

    def build(self, upstream: Upstream) -> tuple[Balancer, Sender]:
        policy = EjectPolicy(self.eject_failures, self.eject_duration, self.eject_max_duration, self.eject_max_share)
        lb = Balancer(self.strategy, decay=self.decay, policy=policy, budget_ratio=self.budget_ratio,
                      budget_floor=self.budget_floor, max_inflight=self.max_inflight)
        return lb, Sender(upstream, lb, attempts=self.attempts, hedge_delay=self.hedge_delay, per_try=self.per_try,
                          buffer=self.buffer, stall=self.stall)
