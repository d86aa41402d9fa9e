"""fabio's registry/consul/routecmd_test.go, row by row: the route command of a tagged instance
(TestRouteCmd), tag prefix `p-`. Pure rows on registry/tags.py."""

from __future__ import annotations

import pytest

from registry.consul.health import Instance
from registry.tags import route_cmds
from tests.fabio.rows import Outcome, row, table

FILE = "registry/consul/routecmd_test.go"

ROWS = [
    row("http", "p-foo/bar", ["route add svc-1 foo/bar http://1.1.1.1:2222/"]),
    row("tcp", "p-:1234 proto=tcp", ["route add svc-1 :1234 tcp://1.1.1.1:2222"]),
]


@pytest.mark.parametrize(("tag", "want", "outcome"), table(FILE, "TestRouteCmd", ROWS))
def test_route_cmd(tag: str, want: list[str], outcome: Outcome) -> None:
    cmds, errors = route_cmds(Instance("svc-1", "svc-1-id", "node", "1.1.1.1", 2222, (tag,)), "p-")
    assert errors == [] and [str(c) for c in cmds] == outcome.want(want)
