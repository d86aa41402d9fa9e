"""fabio's route/parse_test.go, row by row: route command parsing (TestParse) and `register=` aliases
(TestParseAliases). Pure rows.

fabio fails the whole text on a syntax error; we skip the bad line and report it (docs/compat.md, "A bad
route line"). A "fail" row therefore expects no command and one error whose reason says "syntax error".
"""

from __future__ import annotations

import pytest

from registry.consul.register import aliases
from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fabio.rows import Outcome, row, table

FILE = "route/parse_test.go"
FAIL = None  # the row's text is refused with a syntax error


def add(svc: str, src: str, dst: str, weight: float = 0.0, tags: tuple[str, ...] = (), opts: dict | None = None):
    return ("add", svc, src, dst, weight, tags, opts or {})


def delete(svc: str = "", src: str = "", dst: str = "", tags: tuple[str, ...] = ()):
    return ("del", svc, src, dst, 0.0, tags, {})


def weigh(svc: str, src: str, weight: float, tags: tuple[str, ...] = ()):
    return ("weight", svc, src, "", weight, tags, {})


OPTS = {"foo": "bar", "baz": "bang", "blimp": ""}
FAILS = [
    row("FailEmpty", "", []),
    row("FailNoRoute", "bang", FAIL),
    row("FailRouteNoCmd", "route x", FAIL),
    row("FailRouteAddNoService", "route add", FAIL),
    row("FailRouteAddNoSrc", "route add svc", FAIL),
]
PARSE = [
    *FAILS,
    row("RouteAddService", "route add svc /prefix http://1.2.3.4/", [add("svc", "/prefix", "http://1.2.3.4/")]),
    row("RouteAddTCPService", "route add svc :1234 tcp://1.2.3.4:5678", [add("svc", ":1234", "tcp://1.2.3.4:5678")]),
    row("RouteAddGRPCService", "route add svc :1234 grpc://1.2.3.4:5678", [add("svc", ":1234", "grpc://1.2.3.4:5678")]),
    row("RouteAddServiceWeight", "route add svc /prefix http://1.2.3.4/ weight 1.2",
        [add("svc", "/prefix", "http://1.2.3.4/", 1.2)]),
    row("RouteAddServiceWeightTags", 'route add svc /prefix http://1.2.3.4/ weight 1.2 tags "a,b"',
        [add("svc", "/prefix", "http://1.2.3.4/", 1.2, ("a", "b"))]),
    row("RouteAddServiceWeightOpts", 'route add svc /prefix http://1.2.3.4/ weight 1.2 opts "foo=bar baz=bang blimp"',
        [add("svc", "/prefix", "http://1.2.3.4/", 1.2, (), OPTS)]),
    row("RouteAddServiceWeightTagsOpts",
        'route add svc /prefix http://1.2.3.4/ weight 1.2 tags "a,b" opts "foo=bar baz=bang blimp"',
        [add("svc", "/prefix", "http://1.2.3.4/", 1.2, ("a", "b"), OPTS)]),
    row("RouteAddServiceWeightTagsOptsMoreSpaces",
        ' route  add  svc  /prefix  http://1.2.3.4/  weight  1.2  tags  " a , b "  opts  "foo=bar  baz=bang  blimp" ',
        [add("svc", "/prefix", "http://1.2.3.4/", 1.2, ("a", "b"), OPTS)]),
    row("RouteAddTags", 'route add svc /prefix http://1.2.3.4/ tags "a,b"',
        [add("svc", "/prefix", "http://1.2.3.4/", 0.0, ("a", "b"))]),
    row("RouteAddTagsOpts", 'route add svc /prefix http://1.2.3.4/ tags "a,b" opts "foo=bar baz=bang blimp"',
        [add("svc", "/prefix", "http://1.2.3.4/", 0.0, ("a", "b"), OPTS)]),
    row("RouteAddOpts", 'route add svc /prefix http://1.2.3.4/ opts "foo=bar baz=bang blimp"',
        [add("svc", "/prefix", "http://1.2.3.4/", 0.0, (), OPTS)]),
    row("RouteDelTags", 'route del tags "a,b"', [delete(tags=("a", "b"))]),
    row("RouteDelTagsMoreSpaces", 'route  del  tags  " a , b "', [delete(tags=("a", "b"))]),
    row("RouteDelService", "route del svc", [delete("svc")]),
    row("RouteDelServiceTags", 'route del svc tags "a,b"', [delete("svc", tags=("a", "b"))]),
    row("RouteDelServiceTagsMoreSpaces", 'route  del  svc  tags  " a , b "', [delete("svc", tags=("a", "b"))]),
    row("RouteDelServiceSrc", "route del svc /prefix", [delete("svc", "/prefix")]),
    row("RouteDelTCPServiceSrc", "route del svc :1234", [delete("svc", ":1234")]),
    row("RouteDelServiceSrcDst", "route del svc /prefix http://1.2.3.4/", [delete("svc", "/prefix", "http://1.2.3.4/")]),
    row("RouteDelTCPServiceSrcDst", "route del svc :1234 tcp://1.2.3.4:5678",
        [delete("svc", ":1234", "tcp://1.2.3.4:5678")]),
    row("RouteDelServiceSrcDstMoreSpaces", " route  del  svc  /prefix  http://1.2.3.4/ ",
        [delete("svc", "/prefix", "http://1.2.3.4/")]),
    row("RouteWeightServiceSrc", "route weight svc /prefix weight 1.2", [weigh("svc", "/prefix", 1.2)]),
    row("RouteWeightServiceSrcTags", 'route weight svc /prefix weight 1.2 tags "a,b"',
        [weigh("svc", "/prefix", 1.2, ("a", "b"))]),
    row("RouteWeightServiceSrcTagsMoreSpaces", ' route  weight  svc  /prefix  weight  1.2  tags  " a , b " ',
        [weigh("svc", "/prefix", 1.2, ("a", "b"))]),
    row("RouteWeightSrcTags", 'route weight /prefix weight 1.2 tags "a,b"', [weigh("", "/prefix", 1.2, ("a", "b"))]),
    row("RouteWeightSrcTagsMoreSpaces", ' route  weight  /prefix  weight  1.2  tags  " a , b " ',
        [weigh("", "/prefix", 1.2, ("a", "b"))]),
]


def check_refused_or_none(text: str) -> bool:
    """True if `text` was refused with a syntax error (and nothing else came out of it)."""
    cmds, errors = parse(text)
    return cmds == [] and len(errors) == 1 and "syntax error" in errors[0].reason


@pytest.mark.parametrize(("text", "want", "outcome"), table(FILE, "TestParse", PARSE))
def test_parse(text: str, want: list | None, outcome: Outcome) -> None:
    want = outcome.want(want)
    if want is FAIL:
        assert check_refused_or_none(text)
        return
    cmds, errors = parse(text)
    assert errors == []
    assert [(c.op, c.service, c.src, c.dst, c.weight, c.tags, dict(c.opts)) for c in cmds] == want


ALIASES = [
    *FAILS,
    row("RouteAddServiceWithoutAlias", 'route add alpha-be alpha/ http://1.2.3.4/ opts "strip=/path proto=https"', []),
    row("RouteAddServiceWithAlias",
        'route add alpha-be alpha/ http://1.2.3.4/ opts "strip=/path proto=https register=alpha"', ["alpha"]),
    row("RouteAddServicesWithoutAliases",
        'route add alpha-be alpha/ http://1.2.3.4/ opts "strip=/path proto=tcp"\n'
        "route add bravo-be bravo/ http://1.2.3.5/\n"
        'route add charlie-be charlie/ http://1.2.3.6/ opts "host=charlie"', []),
    row("RouteAddServicesWithAliases",
        'route add alpha-be alpha/ http://1.2.3.4/ opts "register=alpha"\n'
        'route add bravo-be bravo/ http://1.2.3.5/ opts "strip=/foo register=bravo"\n'
        'route add charlie-be charlie/ http://1.2.3.5/ opts "host=charlie proto=https"\n'
        'route add delta-be delta/ http://1.2.3.5/ opts "host=delta proto=https register=delta"',
        ["alpha", "bravo", "delta"]),
]


@pytest.mark.parametrize(("text", "want", "outcome"), table(FILE, "TestParseAliases", ALIASES))
def test_parse_aliases(text: str, want: list | None, outcome: Outcome) -> None:
    """fabio's ParseAliases: the `register=` names of the routes; ours come from the built table."""
    want = outcome.want(want)
    if want is FAIL:
        assert check_refused_or_none(text)
        return
    cmds, errors = parse(text)
    assert errors == []
    tbl, errors = TableBuilder().update(manual=cmds)
    assert errors == []
    assert sorted(aliases(tbl.iter_targets())) == want
