"""What the Consul watcher reports about itself: read by the UI, `/health`, `/api/status` and the benchmarks.

Its own module because the UI (ui/view.py) and the static registry (registry/static.py) need these types
without the watcher's loops.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from registry.consul.health import Verdict
from registry.tags import TagError
from router.table.routecmd import LineError, RouteCmd

# The table's input: per service its new commands (None: remove it), and the override commands (None: unchanged).
Sink = Callable[[dict[str, list[RouteCmd] | None], list[RouteCmd] | None], None]


class ServiceStatus:
    """What the UI shows for one tagged service: its instances and why any are not routed.

    The verdicts may come packed (msgpack, from the startup load in the helper process, bulkload.py) and
    are unpacked on first use: at 100,000 instances, building every Verdict and Instance object at
    startup cost seconds and tens of MB for pages that show one service at a time."""

    __slots__ = ("name", "_verdicts", "_packed", "tag_errors", "routes", "updated", "healthy", "instances")

    def __init__(self, name: str, verdicts: list[Verdict] | None = None, tag_errors: list[TagError] | None = None,
                 routes: int = 0, updated: float = 0.0, *, packed: bytes | None = None,
                 counts: tuple[int, int] | None = None) -> None:
        self.name = name
        self._verdicts = verdicts if verdicts is not None or packed is not None else []
        self._packed = packed
        self.tag_errors = tag_errors if tag_errors is not None else []
        self.routes = routes
        self.updated = updated
        # instances routed / registered, known without unpacking (the routes page asks for every service)
        if counts is None:
            vs = self._verdicts or []
            counts = (sum(1 for v in vs if v.healthy), len(vs))
        self.healthy, self.instances = counts

    @property
    def verdicts(self) -> list[Verdict]:
        if self._verdicts is None:
            self._verdicts = _VERDICTS.decode(self._packed or b"\x90")
            self._packed = None
        return self._verdicts


_VERDICTS = msgspec.msgpack.Decoder(list[Verdict])


@dataclass
class RegistryStatus:
    """The watcher's health, read by the UI and /health."""

    backend: str = "consul"
    addr: str = ""
    connected: bool = False
    ready: bool = False
    last_sync: float = 0.0  # wall time of the last successful Consul answer
    indexes: dict[str, int] = field(default_factory=dict)
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=50))
    error_count: int = 0
    requests: int = 0
    paced: int = 0  # watch answers without news after which a loop waited for its rate limit (pacing.py)
    covered: int = 0  # health-answer changes applied without a re-read: a hot watch brought them (rereads.py)
    failed_now: int = 0  # failing checks applied from a health answer before the hot watch's (rereads.py)
    # the hot watches' counts (registry/consul/hot.py: limit, slots, watching, retiring, waiting), set by the watcher
    hot: Callable[[], dict[str, int]] = field(default=lambda: {})
    dumps: int = 0  # /v1/internal/ui/nodes reads (each is O(instances) for Consul and for us)
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    manual_errors: list[LineError] = field(default_factory=list)
    datacenter: str = ""
    # ms from "a watch returned a new Consul index" to "the table with that change was swapped in"
    propagation_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    propagation_count: int = 0
    last_dump: dict[str, float] = field(default_factory=dict)  # the latest /v1/internal/ui/nodes read

    def propagated(self, ms: float) -> None:
        self.propagation_ms.append(ms)
        self.propagation_count += 1

    def propagation_summary(self) -> dict[str, float | int | None]:
        """p50/p90/max of the recent delays (nearest rank), for /api/status."""
        xs = sorted(self.propagation_ms)
        if not xs:
            return {"count": 0, "last_ms": None, "p50_ms": None, "p90_ms": None, "max_ms": None}

        def rank(p: float) -> float:
            return round(xs[min(len(xs) - 1, max(0, -(-len(xs) * p // 100) - 1))], 3)

        return {"count": self.propagation_count, "last_ms": round(self.propagation_ms[-1], 3),
                "p50_ms": rank(50), "p90_ms": rank(90), "max_ms": round(xs[-1], 3)}

    def error(self, text: str) -> None:
        self.errors.append((time.time(), text))
        self.error_count += 1
        self.connected = False

    def synced(self) -> None:
        self.last_sync = time.time()
        self.connected = True

    def sync_age(self) -> float | None:
        return None if not self.last_sync else time.time() - self.last_sync
