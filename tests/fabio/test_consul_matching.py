"""fabio's registry/consul/matching_test.go, row by row: which services carry a route tag
(TestMatchingServices). Pure rows on registry/consul/dump.py, which picks the tagged services out of
Consul's instance dump (each fabio check becomes a node with that check's service)."""

from __future__ import annotations

import pytest

from registry.consul.dump import dump_entries
from tests.fabio.rows import Outcome, row, table

FILE = "registry/consul/matching_test.go"
NO_TAGS: tuple[str, ...] | None = None
NO_ROUTE: tuple[str, ...] = ()
SINGLE_ROUTE = ("route-/something",)

ROWS = [  # prefix, the services' tags, which match
    row("expect match when tag starts correctly", "route-", [SINGLE_ROUTE], [True]),
    row("expect no match when tag does not starts correctly", "xxxxx-", [SINGLE_ROUTE], [False]),
    row("expect no match when no routes", "route-", [NO_ROUTE], [False]),
    row("expect no match when no tags", "route-", [NO_TAGS], [False]),
    row("expect no match when no input", "route-", [], []),
    row("expect no match when no prefix", "", [], []),
]


@pytest.mark.parametrize(("prefix", "tags", "want", "outcome"), table(FILE, "TestMatchingServices", ROWS))
def test_matching_services(prefix: str, tags: list, want: list[bool], outcome: Outcome) -> None:
    nodes = [{"Node": f"n{i}", "Address": "10.0.0.1", "Checks": [],
              "Services": [{"Service": f"svc{i}", "ID": f"svc{i}-1", "Port": 80, "Tags": t}]}
             for i, t in enumerate(tags)]
    tagged = dump_entries(nodes, prefix)
    assert [f"svc{i}" in tagged for i in range(len(tags))] == outcome.want(want)
