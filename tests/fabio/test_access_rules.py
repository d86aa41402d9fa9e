"""fabio's route/access_rules_test.go, row by row: parsing `allow=`/`deny=` values, denying by address,
and denying an HTTP request by its peer and every X-Forwarded-For element. Pure rows.

A value that does not parse is an error in both; fabio then serves the route without rules, we refuse the
route (docs/compat.md; tests/fabio/test_found_defects.py checks that end to end).
"""

from __future__ import annotations

import pytest

from router.table import access
from tests.fabio.rows import Outcome, row, table

FILE = "route/access_rules_test.go"  # as of fabio commit e60df883 (every X-Forwarded-For element counts)
NETS = "ip:10.0.0.0/8,ip:192.168.0.0/24"

PARSE = [
    row("valid ipv4 rule", "ip:10.0.0.0/8,ip:192.168.0.0/24,ip:1.2.3.4/32", False),
    row("valid ipv6 rule", "ip:1234:567:beef:cafe::/64,ip:1234:5678:dead:beef::/32", False),
    row("invalid rule type", "xxx:10.0.0.0/8", True),
    row("ip rule with incomplete address", "ip:10/8", True),
    row("ip rule with bad cidr mask", "ip:10.0.0.0/255", True),
    row("single ipv4 with no mask", "ip:1.2.3.4", False),
    row("single ipv6 with no mask", "ip:fe80::1", False),
]


@pytest.mark.parametrize(("value", "fail", "outcome"), table(FILE, "TestAccessRules_parseAccessRule", PARSE))
def test_parse_access_rule(value: str, fail: bool, outcome: Outcome) -> None:
    for option in ("allow", "deny"):
        try:
            rules = access.rules_for({option: value})
        except ValueError as e:
            assert outcome.want(fail), f"{option}={value}: {e}"
            assert value.split(",")[0] in str(e) or "ip:" in str(e)  # the message names the bad rule
        else:
            assert not outcome.want(fail) and rules is not None and rules.allow is (option == "allow")


V6 = "ip:1234:dead:beef:cafe::/64"
DENY_BY_IP = [
    row("allow rule with included ipv4", "allow", NETS, "10.10.0.1", False),
    row("allow rule with exluded ipv4", "allow", NETS, "1.2.3.4", True),
    row("deny rule with included ipv4", "deny", NETS, "10.10.0.1", True),
    row("deny rule with excluded ipv4", "deny", NETS, "1.2.3.4", False),
    row("allow rule with included ipv6", "allow", V6, "1234:dead:beef:cafe::5678", False),
    row("allow rule with exluded ipv6", "allow", V6, "1234:5678::1", True),
    row("deny rule with included ipv6", "deny", V6, "1234:dead:beef:cafe::5678", True),
    row("deny rule with excluded ipv6", "deny", V6, "1234:5678::1", False),
]


@pytest.mark.parametrize(("option", "nets", "remote", "denied", "outcome"),
                         table(FILE, "TestAccessRules_denyByIP", DENY_BY_IP))
def test_deny_by_ip(option: str, nets: str, remote: str, denied: bool, outcome: Outcome) -> None:
    rules = access.rules_for({option: nets})
    assert rules is not None and (not rules.permits([remote])) is outcome.want(denied)


HTTP = [
    row("single denied xff and allowed remote addr", "10.11.12.13, 1.1.1.2, 10.11.12.14", "10.11.12.1", True),
    row("allowed xff and denied remote addr", "10.11.12.13, 1.2.3.4", "1.1.1.2", True),
    row("single allowed xff and allowed remote addr", "10.11.12.13, 1.2.3.4", "192.168.0.12", True),
    row("denied xff and denied remote addr", "1.2.3.4, 10.11.12.13, 10.11.12.14", "200.17.18.20", True),
    row("all allowed xff and allowed remote addr", "10.11.12.13, 10.110.120.130", "192.168.0.12", False),
]


@pytest.mark.parametrize(("xff", "remote", "denied", "outcome"), table(FILE, "TestAccessRules_AccessDeniedHTTP", HTTP))
def test_access_denied_http(xff: str, remote: str, denied: bool, outcome: Outcome) -> None:
    scope = {"client": (remote, 65500), "headers": [(b"x-forwarded-for", xff.encode())]}
    assert (not access.permitted({"allow": NETS}, scope)) is outcome.want(denied)
