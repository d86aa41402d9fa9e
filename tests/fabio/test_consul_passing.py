"""fabio's registry/consul/passing_test.go, row by row: which health checks count as passing
(TestPassingServices), with `registry.consul.service.status` and `checksRequired=all` ("strict").

Pure rows on registry/consul/health.py, which judges instances rather than filtering checks: each row's
checks are grouped into instances the way Consul's health answer groups them (an instance's own checks plus
its node's), and the checks fabio returns are those of the instances we route, in the row's order.
"""

from __future__ import annotations

import pytest

from registry.consul.health import judge
from tests.fabio.rows import Outcome, row, table

FILE = "registry/consul/passing_test.go"


def check(node: str, cid: str, status: str, name: str = "", sid: str = "") -> dict:
    return {"Node": node, "CheckID": cid, "Status": status, "ServiceName": name, "ServiceID": sid}


C = {
    "serfPass": check("node", "serfHealth", "passing"),
    "serfFail": check("node", "serfHealth", "critical"),
    "svc1Pass": check("node", "service:abc", "passing", "abc", "abc-1"),
    "svc1Chk2Warn": check("node", "service:abc", "warning", "abc", "abc-1"),
    "svc1Node2Pass": check("node2", "service:abc", "passing", "abc", "abc-1"),
    "svc1Warn": check("node", "service:abc", "warning", "abc", "abc-2"),
    "svc1Crit": check("node", "service:abc", "critical", "abc", "abc-3"),
    "svc2Pass": check("node", "my-check-id", "passing", "def", "def-1"),
    "svc1Maint": check("node", "_service_maintenance:abc-1", "critical", "abc", "abc-1"),
    "svc1ID2Maint": check("node", "_service_maintenance:abc-2", "critical", "abc", "abc-2"),
    "nodeMaint": check("node", "_node_maintenance", "critical"),
}


def passing(names: list[str], status: list[str], strict: bool) -> list[str]:
    checks = [(n, C[n]) for n in names]
    node_checks: dict[str, list[dict]] = {}
    own: dict[tuple[str, str], list[dict]] = {}
    for _, c in checks:
        if c["ServiceID"]:
            own.setdefault((c["Node"], c["ServiceID"]), []).append(c)
        else:
            node_checks.setdefault(c["Node"], []).append(c)
    routed = set()
    for (node, sid), cs in own.items():
        entry = {"Node": {"Node": node, "Address": "10.0.0.1"},
                 "Service": {"ID": sid, "Service": cs[0]["ServiceName"], "Port": 80, "Tags": []},
                 "Checks": node_checks.get(node, []) + cs}
        if judge(entry, status, strict).healthy:
            routed.add((node, sid))
    return [n for n, c in checks if (c["Node"], c["ServiceID"]) in routed and not c["CheckID"].startswith("_")]


P, PW = ["passing"], ["passing", "warning"]
ROWS = [
    row("expect no passing checks if checks array is nil", False, P, [], []),
    row("expect no passing checks if checks array is empty", False, P, [], []),
    row("expect check to pass if it has a matching status", False, P, ["svc1Pass"], ["svc1Pass"]),
    row("expect all checks to pass if they have a matching status", False, P, ["svc1Pass", "svc2Pass"],
        ["svc1Pass", "svc2Pass"]),
    row("expect that internal consul checks are filtered out", False, P, ["serfPass", "svc1Pass"], ["svc1Pass"]),
    row("expect no passing checks if consul agent is unhealthy", False, P, ["serfFail", "svc1Pass"], []),
    row("expect no passing checks if node is in maintenance mode", False, P, ["nodeMaint", "svc1Pass"], []),
    row("expect no passing check if corresponding service is in maintenance mode", False, P,
        ["svc1Maint", "svc1Pass"], []),
    row("expect no passing check if node and service are in maintenance mode", False, P,
        ["nodeMaint", "svc1Maint", "svc1Pass"], []),
    row("expect no passing check if agent is unhealthy or node and service are in maintenance mode", False, P,
        ["serfFail", "nodeMaint", "svc1Maint", "svc1Pass"], []),
    row("expect check of service which is not in maintenance mode to pass if another instance of same service is in "
        "maintenance mode", False, P, ["svc1ID2Maint", "svc1Pass"], ["svc1Pass"]),
    row("expect that no checks of a service which is in maintenance mode are returned even if it has a passing check",
        False, P, ["svc1Maint", "svc1Pass", "svc2Pass"], ["svc2Pass"]),
    row("expect that a service's failing check does not affect a healthy instance of same service running on "
        "different node", False, P, ["svc1Crit", "svc1Node2Pass"], ["svc1Node2Pass"]),
    row("service in maintenance mode does not affect healthy service running on different node", False, P,
        ["svc1Maint", "svc1Node2Pass"], ["svc1Node2Pass"]),
    row("expect that internal consul check and failing check are not returned", False, PW,
        ["serfPass", "svc1Pass", "svc1Crit"], ["svc1Pass"]),
    row("expect that internal consul check is filtered out and check with warning is passing", False, PW,
        ["serfPass", "svc1Warn", "svc1Crit"], ["svc1Warn"]),
    row("expect that warning and passing non-internal checks are returned", False, PW,
        ["serfPass", "svc1Pass", "svc1Warn"], ["svc1Pass", "svc1Warn"]),
    row("expect that warning und passing non-internal checks are returned", False, PW,
        ["serfPass", "svc1Warn", "svc1Crit", "svc1Pass"], ["svc1Warn", "svc1Pass"]),
    row("in non-strict mode, expect that checks which belong to same service are passing, if at least one of them is "
        "passing", False, P, ["svc1Pass", "svc1Chk2Warn"], ["svc1Pass", "svc1Chk2Warn"]),
    row("in strict mode, expect that no checks which belong to same service are passing, if not all of them are "
        "passing", True, P, ["svc1Pass", "svc1Chk2Warn"], []),
    row("in strict mode, expect that a failing check of one service does not affect a different service's passing "
        "check", True, P, ["svc1Pass", "svc1Chk2Warn", "svc2Pass"], ["svc2Pass"]),
    row("in strict mode, expect a check to pass if all of the other checks that belong to the same service are passing",
        True, PW, ["svc1Pass", "svc1Chk2Warn"], ["svc1Pass", "svc1Chk2Warn"]),
]


@pytest.mark.parametrize(("strict", "status", "checks", "want", "outcome"), table(FILE, "TestPassingServices", ROWS))
def test_passing_services(strict: bool, status: list[str], checks: list[str], want: list[str], outcome: Outcome) -> None:
    assert passing(checks, status, strict) == outcome.want(want)
