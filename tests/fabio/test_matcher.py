"""fabio's route/matcher_test.go, row by row: the prefix and glob path matchers. Pure rows: a table with
the row's one route, looked up with the row's path."""

from __future__ import annotations

import pytest

from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fabio.rows import Outcome, row, table

FILE = "route/matcher_test.go"


def matches(matcher: str, route_path: str, uri: str) -> bool:
    cmds, errors = parse(f"route add svc {route_path} http://a.com/")
    assert errors == []
    tbl, errors = TableBuilder(matcher=matcher).update(manual=cmds)
    assert errors == []
    return tbl.lookup("", uri) is not None


PREFIX = [
    row("/foo", "/foo", "/foo", True),
    row("/fools", "/fools", "/foo", True),
    row("/fo", "/fo", "/foo", False),
    row("/bar", "/bar", "/foo", False),
]


@pytest.mark.parametrize(("uri", "path", "want", "outcome"), table(FILE, "TestPrefixMatcher", PREFIX))
def test_prefix_matcher(uri: str, path: str, want: bool, outcome: Outcome) -> None:
    assert matches("prefix", path, uri) is outcome.want(want)


GLOB = [
    # happy flows
    row("/foo", "/foo", "/foo", True),
    row("/fool ?", "/fool", "/foo?", True),
    row("/fool *", "/fool", "/foo*", True),
    row("/fools *", "/fools", "/foo*", True),
    row("/fools * (again)", "/fools", "/foo*", True),
    row("/foo/x/bar", "/foo/x/bar", "/foo/*/bar", True),
    row("/foo/x/y/z/w/bar **", "/foo/x/y/z/w/bar", "/foo/**", True),
    row("/foo/x/y/z/w/bar **/bar", "/foo/x/y/z/w/bar", "/foo/**/bar", True),
    # error flows
    row("/fo", "/fo", "/foo", False),
    row("/fools", "/fools", "/foo", False),
    row("/fo *", "/fo", "/foo*", False),
    row("/fools .*", "/fools", "/foo.*", False),
    row("/foo/x/y/z/w/baz", "/foo/x/y/z/w/baz", "/foo/**/bar", False),
]


@pytest.mark.parametrize(("uri", "path", "want", "outcome"), table(FILE, "TestGlobMatcher", GLOB))
def test_glob_matcher(uri: str, path: str, want: bool, outcome: Outcome) -> None:
    assert matches("glob", path, uri) is outcome.want(want)
