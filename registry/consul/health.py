"""Which instances of a service receive traffic, by fabio's rules (pure functions).

Input is one `/v1/health/service/<name>` answer: each entry has the Node, the Service and every check
that bears on it (node checks such as serfHealth and maintenance included).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

NODE_MAINT = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
SERF = "serfHealth"
# The default of registry.consul.unrunhold: how long a routed instance keeps its route while a check has
# not run yet (see `not_yet_run`). Longer than the usual check intervals (10-30 s), so a restarted agent
# runs every check well within it.
UNRUN_HOLD = 45.0


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
    held: bool = False  # healthy only because a check that has not run yet was given the benefit of the doubt


class _RawInstance:
    """Instance's slots without the frozen ``__setattr__``: built ~3x faster (router/table/routecmd.py's
    _RawCmd explains the trick). One Instance and one Verdict per instance and judgement: 100,000 of each
    at startup for 100,000 instances (issue 18)."""

    __slots__ = Instance.__slots__

    def __init__(self, service: str, id: str, node: str, address: str, port: int, tags: tuple[str, ...]) -> None:
        self.service = service
        self.id = id
        self.node = node
        self.address = address
        self.port = port
        self.tags = tags


class _RawVerdict:
    __slots__ = Verdict.__slots__

    def __init__(self, instance: Instance, healthy: bool, reason: str, held: bool = False) -> None:
        self.instance = instance
        self.healthy = healthy
        self.reason = reason
        self.held = held


assert _RawInstance.__slots__ == tuple(Instance.__dataclass_fields__)
assert _RawVerdict.__slots__ == tuple(Verdict.__dataclass_fields__)


def _verdict(instance: Instance, healthy: bool, reason: str, held: bool = False) -> Verdict:
    v = _RawVerdict(instance, healthy, reason, held)
    v.__class__ = Verdict  # type: ignore[assignment]
    return v  # type: ignore[return-value]


def not_yet_run(check: dict[str, Any]) -> bool:
    """Consul's state for a check it has not run since it was loaded: critical with no output.

    A restarted agent reloads its checks from its data dir this way (TTL checks keep their state; every
    other kind produces output when it runs) and syncs that to the catalog until each check's first run,
    up to an interval later. Taken at its word, that drops every healthy instance of the node for seconds
    (fabio #861). It is not evidence of failure, so an instance that was routed keeps its route then.
    """
    return check.get("Status") == "critical" and not check.get("Output") and check.get("Type") not in (None, "", "ttl")


def instance_of(entry: dict[str, Any]) -> Instance:
    node = entry.get("Node") or {}
    svc = entry.get("Service") or {}
    i = _RawInstance(svc.get("Service", ""), svc.get("ID", ""), node.get("Node", ""),
                     svc.get("Address") or node.get("Address", ""), int(svc.get("Port") or 0),
                     tuple([t.strip() for t in svc.get("Tags") or ()]))
    i.__class__ = Instance  # type: ignore[assignment]
    return i  # type: ignore[return-value]


def judge(
    entry: dict[str, Any], allowed: Iterable[str] = ("passing",), all_required: bool = False,
    hold: bool = False,
) -> Verdict:
    """Decide whether one instance is routable and say why not. With `hold` (the instance is routed now),
    a check that has not run yet counts as passing."""
    inst = instance_of(entry)
    if not isinstance(allowed, (tuple, frozenset, set)):  # judge_all passes a tuple: a few statuses at most
        allowed = tuple(allowed)
    total = passing = 0
    held = False
    failing: list[str] = []
    for check in entry.get("Checks") or ():
        cid = check.get("CheckID", "")
        status = check.get("Status", "")
        if cid == SERF:
            if status == "critical":
                return _verdict(inst, False, "node is down (serfHealth critical)")
            continue
        if cid == NODE_MAINT:
            return _verdict(inst, False, "node is in maintenance")
        if cid.startswith(SERVICE_MAINT_PREFIX):
            if cid == SERVICE_MAINT_PREFIX + inst.id and status == "critical":
                return _verdict(inst, False, "instance is in maintenance")
            continue
        if check.get("ServiceID", "") != inst.id:
            continue  # another node-level check: does not count for the instance, as in fabio
        total += 1
        if status in allowed:
            passing += 1
            continue
        unrun = not_yet_run(check)
        if hold and unrun:
            passing += 1
            held = True
        else:
            failing.append(f"{cid}={status}" + (" (not run yet)" if unrun else ""))
    if total == 0:
        return _verdict(inst, False, "no health checks (only instances with passing checks are routed)")
    if passing == 0:
        return _verdict(inst, False, "no check in an allowed status: " + ", ".join(failing))
    if all_required and passing != total:
        return _verdict(inst, False, "checksRequired=all and not all checks pass: " + ", ".join(failing))
    return _verdict(inst, True, "", held)


def judge_all(
    entries: Sequence[dict[str, Any]], allowed: Iterable[str] = ("passing",), all_required: bool = False,
    hold: Collection[str] = (),
) -> list[Verdict]:
    """`hold`: IDs of the instances routed now, which keep their route while a check has not run yet."""
    allowed = tuple(allowed)
    if not hold:  # the usual case: no instance to look up
        return [judge(e, allowed, all_required) for e in entries]
    return [judge(e, allowed, all_required, instance_of(e).id in hold) for e in entries]
