"""allow=/deny= rule parsing and evaluation (router/table/access.py)."""

from __future__ import annotations

import pytest

from router.table.access import permitted, rules_for


def scope(peer: str, *xff: str) -> dict:
    return {"client": (peer, 1), "headers": [(b"x-forwarded-for", x.encode()) for x in xff]}


@pytest.mark.parametrize(("opts", "peer", "xff", "ok"), [
    ({"allow": "ip:10.0.0.0/8"}, "10.1.1.1", (), True),
    ({"allow": "ip:10.0.0.0/8"}, "11.1.1.1", (), False),
    ({"allow": "ip:10.0.0.0/8"}, "10.1.1.1", ("10.2.2.2, 12.0.0.1",), False),   # every XFF element
    ({"allow": "ip:10.0.0.0/8"}, "10.1.1.1", ("10.2.2.2", "10.3.3.3"), True),   # several XFF headers
    ({"allow": "ip:1.2.3.4"}, "1.2.3.4", (), True),                               # bare IP = /32
    ({"allow": "ip:1.2.3.4"}, "1.2.3.5", (), False),
    ({"allow": "ip:fe80::/10"}, "fe80::1", (), True),
    ({"deny": "ip:10.0.0.0/8,ip:192.168.0.1"}, "127.0.0.1", (), True),
    ({"deny": "ip:10.0.0.0/8,ip:192.168.0.1"}, "127.0.0.1", ("8.8.8.8, 192.168.0.1",), False),
    ({"deny": "ip:10.0.0.0/8"}, "127.0.0.1", ("not-an-ip",), False),              # fail closed
    ({"strip": "/x"}, "", (), True),                                              # no rules
])
def test_rules(opts: dict, peer: str, xff: tuple, ok: bool) -> None:
    assert permitted(opts, scope(peer, *xff)) is ok


@pytest.mark.parametrize("opts", [
    {"allow": "ip:10.0.0.0/8", "deny": "ip:1.1.1.1"},
    {"allow": "10.0.0.0/8"},
    {"deny": "ip:10.0.0.300"},
    {"allow": ""},
])
def test_invalid_rules(opts: dict) -> None:
    with pytest.raises(ValueError):
        rules_for(opts)
