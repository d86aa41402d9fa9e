"""The edge's counters across worker processes (pure): with `proxy.workers` > 1 every worker serves the TLS,
TCP and gRPC listeners too (router/run/edge.py), so its TCP, gRPC and certificate counters live in that
worker. Each worker sends a :func:`snapshot` with its stats report (router/run/workers.py); the main
process :func:`merge`\\s them (plus those of workers that exited, so counters stay monotonic) and its own
Edge shows the sums (Edge.absorb) on /metrics and /api/status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Snapshot = dict[str, Any]
_TCP_DICTS = ("conn", "connfail", "noroute", "denied", "rx", "tx")
_GRPC_INTS = ("requests", "conn", "noroute")


def snapshot(edge: Any) -> Snapshot:
    """Everything the edge of one process counts, as plain (picklable) values."""
    t, g = edge.tcp, edge.grpc.stats
    return {
        "tcp": {**{k: dict(getattr(t, k)) for k in _TCP_DICTS}, "open": t.open},
        "grpc": {**{k: getattr(g, k) for k in _GRPC_INTS}, "status": dict(g.status), "seconds": g.seconds,
                 "buckets": list(g.buckets)},
        "certs": {str(c.listener): (c.spec.name, list(c.names), c.updates, c.failed_handshakes) for c in edge.certs},
        "dynamic": sorted(edge.dynamic),
    }


def _add(into: dict, other: dict) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def merge(snaps: Iterable[Snapshot | None]) -> Snapshot:
    """The sums of several snapshots; certificate names and tcp-dynamic ports as the last one that has them
    (every worker watches the same sources), their counters summed. `open` sums too (live connections)."""
    tcp: dict[str, Any] = {k: {} for k in _TCP_DICTS}
    tcp["open"] = 0
    grpc: dict[str, Any] = {k: 0 for k in _GRPC_INTS}
    grpc.update(status={}, seconds=0.0, buckets=[])
    certs: dict[str, tuple[str, list[str], int, int]] = {}
    dynamic: set[int] = set()
    for s in snaps:
        if not s:
            continue
        for k in _TCP_DICTS:
            _add(tcp[k], s["tcp"][k])
        tcp["open"] += s["tcp"]["open"]
        g = s["grpc"]
        for k in _GRPC_INTS:
            grpc[k] += g[k]
        _add(grpc["status"], g["status"])
        grpc["seconds"] += g["seconds"]
        b = grpc["buckets"]
        grpc["buckets"] = [x + y for x, y in zip(b, g["buckets"], strict=True)] if b else list(g["buckets"])
        for name, (source, names, updates, failed) in s["certs"].items():
            _, _, u, f = certs.get(name, ("", [], 0, 0))
            certs[name] = (source, names, u + updates, f + failed)
        dynamic.update(s["dynamic"])
    return {"tcp": tcp, "grpc": grpc, "certs": certs, "dynamic": sorted(dynamic)}


def retired(s: Snapshot | None) -> Snapshot | None:
    """What of an exited worker's snapshot still counts: everything but its open connections."""
    if not s:
        return s
    return {**s, "tcp": {**s["tcp"], "open": 0}, "dynamic": []}
