"""What one proxy process knows about one upstream instance: load, latency estimate, failures, ejection.

Failure state belongs to the instance (InstanceState), identified by its route command's source (the
Consul service instance: "service:<name>/<ID>") plus scheme, host and port, and shared by every route
pointing at it (router/proxy/balance.py keeps the registry of them and the pickers that read them).

The estimate is an EWMA weighted by time (`proxy.lb.decay`), which decays while nothing is observed; one
older than STALE decays is forgotten, so an avoided instance gets a probe request now and then. A failed
try is a *peak*: the estimate jumps to at least FAILURE_RTT, so an instance that fails fast does not
attract traffic. merge_docs joins several worker processes' views of the instances for /api/services.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

PENALTY = 1e6  # cost of a cold instance with a probe in flight: it gets one probe at a time
FAILURE_RTT = 1.0  # a failed try counts as a latency of at least this (seconds)
STALE = 2.0  # an estimate older than this many proxy.lb.decay is forgotten: the instance is probed again
STALL_TRIES = 3  # tries sent to an instance since its last answer before its silence can be a stall


class InstanceState:
    """What one proxy process knows about one instance: load, latency estimate, failures, ejection."""

    __slots__ = ("key", "addr", "service", "outstanding", "ewma", "stamp", "probe_at", "fails", "until", "reason",
                 "streak", "ejections", "failures", "unanswered", "silent_since", "waiting",
                 "__weakref__")

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
        self.unanswered = 0  # tries sent to it since it last sent response headers (router/proxy/attempts.py)
        self.silent_since = 0.0  # when the first of those was sent
        # tries that may be cut if it stalls: response -> (not before, the route's stall time); a response
        # leaves when it is released or closed (router/proxy/upstream_response.py)
        self.waiting: dict[Any, tuple[float, float]] = {}

    def stalled(self, now: float, after: float) -> bool:
        """Stalled: no response headers for `after` seconds while STALL_TRIES or more tries waited on it.
        One slow request is not a stall (the instance answers others, or nothing else waited)."""
        return self.unanswered >= STALL_TRIES and now - self.silent_since >= after

    def answered(self, rtt: float, now: float, inv_tau: float) -> None:
        """A try answered (below 500): its latency folds into the estimate, an EWMA weighted by the time since
        the last one (an instance observed rarely moves at once, one observed often is smoothed), and the
        failure streak ends. One call per proxied request (router/proxy/attempts.py)."""
        e = self.ewma
        if e:
            w = math.exp((self.stamp - now) * inv_tau)
            self.ewma = e * w + rtt * (1.0 - w)
        else:
            self.ewma = rtt
        self.stamp = now
        self.probe_at = 0.0
        if self.fails:
            self.fails = 0
            self.streak = 0

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
