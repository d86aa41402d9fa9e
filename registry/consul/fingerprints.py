"""Fingerprints of the health watches' answers: which tagged services' health may have changed (pure functions).

Two answers with equal fingerprints for a service mean nothing that decides its routes changed, so only the
services whose fingerprint differs are re-read (docs/discovery.md).
"""

from __future__ import annotations

from typing import Any


def health_fingerprints(checks: list[dict[str, Any]], prefix: str) -> dict[str, frozenset]:
    """Per tagged service: the set of facts about its checks and its nodes' checks.

    Two answers with equal fingerprints for a service mean nothing that decides its routes changed.
    """
    node_checks: dict[str, list[tuple[str, str]]] = {}
    per_service: dict[str, set] = {}
    nodes_of: dict[str, set[str]] = {}
    for c in checks:
        node = c.get("Node", "")
        sid = c.get("ServiceID", "")
        if not sid:
            node_checks.setdefault(node, []).append((c.get("CheckID", ""), c.get("Status", "")))
            continue
        name = c.get("ServiceName", "")
        tags = tuple(c.get("ServiceTags") or ())
        per_service.setdefault(name, set()).add((node, sid, c.get("CheckID", ""), c.get("Status", ""), tags))
        nodes_of.setdefault(name, set()).add(node)
    out: dict[str, frozenset] = {}
    for name, facts in per_service.items():
        if not any(t.startswith(prefix) for f in facts for t in f[4]):
            continue
        node_facts = {(n, cid, st) for n in nodes_of[name] for cid, st in node_checks.get(n, ())}
        out[name] = frozenset(facts | node_facts)
    return out


# Watched separately instead of `/v1/health/state/any?filter=Status != "passing"`: Consul answers these from
# its status index, touching only checks in that state (3.5 ms at 30,000 instances, woken only when a check
# enters or leaves the state), while the filter evaluated every check on every change (97 ms at 30,000).
NONPASSING_STATES = ("critical", "warning")


def nonpassing_fingerprints(checks: list[dict[str, Any]], node_services: dict[str, set[str]],
                            tagged: Any, prefix: str | None = None) -> dict[str, frozenset]:
    """Per tagged service: its non-passing checks and those of its nodes.

    With the instances and their check IDs known from the dump, the set of checks that are *not*
    passing determines every check's status, so equal fingerprints mean equal health. The body of
    this watch is O(non-passing checks) instead of O(all checks).

    With `prefix`, a service check whose own `ServiceTags` carry a route tag counts as tagged even before
    the catalog answer says so: a new instance registered critical is then re-read (and watched, hot.py)
    at once, and its check turning passing is routed without waiting for `/v1/catalog/services`, which
    Consul answers slowly while it writes an instance dump (seconds at 30,000 instances, issue 18).
    """
    out: dict[str, set] = {}
    for c in checks:
        node, sid = c.get("Node", ""), c.get("ServiceID", "")
        fact = (node, sid, c.get("CheckID", ""), c.get("Status", ""))
        names = {c.get("ServiceName", "")} if sid else node_services.get(node, set())
        for name in names:
            if name in tagged or (sid and prefix is not None
                                  and any(t.strip().startswith(prefix) for t in c.get("ServiceTags") or ())):
                out.setdefault(name, set()).add(fact)
    return {n: frozenset(f) for n, f in out.items()}


def nonpassing_of(entries: list[dict[str, Any]]) -> frozenset:
    """One service's `/v1/health/service/<name>` entries -> the same facts `nonpassing_fingerprints` gives
    for it from the state watches (its non-passing checks and its nodes'), so the two compare: equal means
    that a health answer shows nothing the applied entries do not (registry/consul/rereads.py)."""
    return frozenset((c.get("Node", ""), c.get("ServiceID", ""), c.get("CheckID", ""), c.get("Status", ""))
                     for e in entries for c in e.get("Checks") or () if c.get("Status") != "passing")
