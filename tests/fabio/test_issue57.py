"""fabio's route/issue57_test.go, row by row: once every target of a route is deleted, its requests go to
the next matching route. Pure rows."""

from __future__ import annotations

import pytest

from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fabio.rows import Outcome, row, table

FILE = "route/issue57_test.go"
BASE = "route add svca / http://foo.com:800\nroute add svcb /foo http://foo.com:900\n"

ROWS = [
    row("0 del service, path and target", BASE + "route del svcb /foo http://foo.com:900"),
    row("1 del service and path", BASE + "route del svcb /foo"),
    row("2 del service", BASE + "route del svcb"),
]


@pytest.mark.parametrize(("text", "outcome"), table(FILE, "TestIssue57", ROWS))
def test_issue57(text: str, outcome: Outcome) -> None:
    cmds, errors = parse(text)
    assert errors == []
    tbl, errors = TableBuilder().update(manual=cmds)
    assert errors == []
    route = tbl.lookup("", "/foo")
    assert route is not None and route.pick("rr").url == "http://foo.com:800"
