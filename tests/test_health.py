"""Health filtering by fabio's rules: statuses, checksRequired, serfHealth, maintenance."""

from __future__ import annotations

from typing import Any

import pytest

from registry.consul.health import judge, judge_all, not_yet_run


def entry(*checks: tuple[str, str, str], address: str = "", node_addr: str = "10.0.0.9") -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": node_addr},
        "Service": {"ID": "web-1", "Service": "web", "Address": address, "Port": 80, "Tags": ["urlprefix-/"]},
        "Checks": [{"CheckID": cid, "Status": st, "ServiceID": sid} for cid, st, sid in checks],
    }


SERF_OK = ("serfHealth", "passing", "")
SVC = "web-1"


@pytest.mark.parametrize(
    ("checks", "allowed", "all_required", "healthy", "reason"),
    [
        ([SERF_OK, ("c1", "passing", SVC)], ("passing",), False, True, ""),
        ([SERF_OK, ("c1", "warning", SVC)], ("passing",), False, False, "no check in an allowed status"),
        ([SERF_OK, ("c1", "warning", SVC)], ("passing", "warning"), False, True, ""),
        ([SERF_OK, ("c1", "passing", SVC), ("c2", "critical", SVC)], ("passing",), False, True, ""),
        ([SERF_OK, ("c1", "passing", SVC), ("c2", "critical", SVC)], ("passing",), True, False, "checksRequired=all"),
        ([("serfHealth", "critical", ""), ("c1", "passing", SVC)], ("passing",), False, False, "node is down"),
        ([SERF_OK, ("_node_maintenance", "critical", ""), ("c1", "passing", SVC)], ("passing",), False, False,
         "node is in maintenance"),
        ([SERF_OK, ("_service_maintenance:web-1", "critical", SVC), ("c1", "passing", SVC)], ("passing",), False,
         False, "instance is in maintenance"),
        ([SERF_OK, ("_service_maintenance:web-2", "critical", "web-2"), ("c1", "passing", SVC)], ("passing",), False,
         True, ""),
        ([SERF_OK], ("passing",), False, False, "no health checks"),
        ([SERF_OK, ("c-other", "passing", "web-2")], ("passing",), False, False, "no health checks"),
    ],
)
def test_judge(checks, allowed, all_required, healthy, reason) -> None:  # type: ignore[no-untyped-def]
    v = judge(entry(*checks), allowed, all_required)
    assert v.healthy is healthy
    assert reason in v.reason
    if healthy:
        assert v.reason == ""


def test_node_address_when_service_address_empty() -> None:
    """Registrator registers with an empty ServiceAddress: the node's address is used."""
    assert judge(entry(SERF_OK, ("c", "passing", SVC))).instance.address == "10.0.0.9"
    assert judge(entry(SERF_OK, ("c", "passing", SVC), address="10.1.1.1")).instance.address == "10.1.1.1"


def _check(status: str, output: str, kind: str) -> dict[str, Any]:
    return {"CheckID": "c1", "Status": status, "ServiceID": SVC, "Output": output, "Type": kind}


@pytest.mark.parametrize(
    ("check", "unrun"),
    [
        (_check("critical", "", "http"), True),  # reloaded by a restarted agent, not run yet
        (_check("critical", "", "tcp"), True),
        (_check("critical", "connection refused", "http"), False),  # it ran and failed
        (_check("critical", "", "ttl"), False),  # TTL state survives restarts; a fail without a note is real
        (_check("critical", "", ""), False),  # catalog-registered checks (no agent runs them)
        (_check("passing", "", "http"), False),
        ({"CheckID": "c1", "Status": "critical", "ServiceID": SVC}, False),  # old Consul: no Type field
    ],
)
def test_not_yet_run(check: dict[str, Any], unrun: bool) -> None:
    assert not_yet_run(check) is unrun


def test_unrun_check_keeps_a_routed_instance_only() -> None:
    e = entry(SERF_OK)
    e["Checks"].append(_check("critical", "", "http"))
    new = judge(e)  # a new instance: nothing to keep, and the reason says why
    assert (new.healthy, new.held) == (False, False) and "c1=critical (not run yet)" in new.reason
    kept = judge(e, hold=True)  # routed before the agent restarted: keeps its route until the check runs
    assert (kept.healthy, kept.held) == (True, True)
    e["Checks"][-1]["Output"] = "HTTP GET http://x/health: 503"
    ran = judge(e, hold=True)  # the check ran and failed: out
    assert (ran.healthy, ran.held) == (False, False)
    assert [v.healthy for v in judge_all([e, entry(SERF_OK, ("c1", "passing", SVC))], hold={SVC})] == [False, True]
