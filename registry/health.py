"""Which instances of a service receive traffic, by fabio's rules (pure functions).

Input is one `/v1/health/service/<name>` answer: each entry has the Node, the Service and every check
that bears on it (node checks such as serfHealth and maintenance included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

NODE_MAINT = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
SERF = "serfHealth"


@dataclass(frozen=True, slots=True)
class Instance:
    service: str
    id: str
    node: str
    address: str  # ServiceAddress, else the node's Address (how Registrator registers)
    port: int
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    instance: Instance
    healthy: bool
    reason: str  # why it is not routed ("" when healthy)


def instance_of(entry: dict[str, Any]) -> Instance:
    node = entry.get("Node") or {}
    svc = entry.get("Service") or {}
    return Instance(
        service=svc.get("Service", ""),
        id=svc.get("ID", ""),
        node=node.get("Node", ""),
        address=svc.get("Address") or node.get("Address", ""),
        port=int(svc.get("Port") or 0),
        tags=tuple(t.strip() for t in (svc.get("Tags") or ())),
    )


def judge(
    entry: dict[str, Any], allowed: Iterable[str] = ("passing",), all_required: bool = False
) -> Verdict:
    """Decide whether one instance is routable and say why not."""
    inst = instance_of(entry)
    allowed = set(allowed)
    total = passing = 0
    failing: list[str] = []
    for check in entry.get("Checks") or ():
        cid = check.get("CheckID", "")
        status = check.get("Status", "")
        if cid == SERF:
            if status == "critical":
                return Verdict(inst, False, "node is down (serfHealth critical)")
            continue
        if cid == NODE_MAINT:
            return Verdict(inst, False, "node is in maintenance")
        if cid.startswith(SERVICE_MAINT_PREFIX):
            if cid == SERVICE_MAINT_PREFIX + inst.id and status == "critical":
                return Verdict(inst, False, "instance is in maintenance")
            continue
        if check.get("ServiceID", "") != inst.id:
            continue  # another node-level check: does not count for the instance, as in fabio
        total += 1
        if status in allowed:
            passing += 1
        else:
            failing.append(f"{cid}={status}")
    if total == 0:
        return Verdict(inst, False, "no health checks (only instances with passing checks are routed)")
    if passing == 0:
        return Verdict(inst, False, "no check in an allowed status: " + ", ".join(failing))
    if all_required and passing != total:
        return Verdict(inst, False, "checksRequired=all and not all checks pass: " + ", ".join(failing))
    return Verdict(inst, True, "")


def judge_all(
    entries: Sequence[dict[str, Any]], allowed: Iterable[str] = ("passing",), all_required: bool = False
) -> list[Verdict]:
    allowed = tuple(allowed)
    return [judge(e, allowed, all_required) for e in entries]
