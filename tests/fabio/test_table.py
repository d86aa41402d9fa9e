"""fabio's route/table_test.go, row by row: table building and weights (TestTableParse), host
normalisation, lookups (TestTableLookup, issues #448 and #656), NewTableCustom and Table.Dump.

Pure rows: the table is built from the same route commands (as override text, which is how fabio's
NewTable reads them) and looked up directly.
"""

from __future__ import annotations

from collections import Counter

import pytest

from router.proxy import redirect
from router.table.builder import TableBuilder
from router.table.routecmd import RouteCmd, parse
from router.table.routes import Table
from router.table.target import hostpath
from tests.fabio.rows import Outcome, row, table

FILE = "route/table_test.go"


def build(text: str, glob: bool = True) -> Table:
    cmds, errors = parse(text)
    assert errors == []
    tbl, errors = TableBuilder(glob_matching=glob).update(manual=cmds)
    assert errors == []
    return tbl


def config_lines(tbl: Table) -> list[str]:
    """fabio's Table.config(true): hosts descending ("" last), paths descending, every live target with
    its computed weight as `weight %.4f`, then its tags and options."""
    rows = tbl.routes()  # hosts ascending, paths descending, targets in fabio's order
    hosts = sorted({r["host"] for r in rows}, key=lambda h: (h != "", h), reverse=True)
    out = []
    for h in hosts:
        for r in rows:
            if r["host"] != h or r["weight"] <= 0:
                continue
            line = f"route add {r['service']} {r['src']} {r['dst']} weight {r['weight']:.4f}"
            if r.get("tags"):
                line += ' tags "{}"'.format(",".join(r["tags"]))
            if r["opts"]:
                line += f' opts "{r["opts"]}"'
            out.append(line)
    return out


def gen(n: int, fmt: str) -> list[str]:
    return [fmt % i for i in range(n)]


PARSE = [
    row("1 service, 1 prefix", ["route add svc-a / http://aaa.com/"], ["route add svc-a / http://aaa.com/ weight 1.0000"]),
    row("1 service, 1 prefix, 3 instances",
        ["route add svc-a / http://aaa.com:1111/", "route add svc-a / http://aaa.com:2222/",
         "route add svc-a / http://aaa.com:3333/"],
        ["route add svc-a / http://aaa.com:1111/ weight 0.3333", "route add svc-a / http://aaa.com:2222/ weight 0.3333",
         "route add svc-a / http://aaa.com:3333/ weight 0.3333"]),
    row("1 service, 1 prefix with option",
        ['route add svc-a / http://aaa.com/ opts "strip=/foo"', 'route add svc-b / http://bbb.com/ opts "strip=/bar"'],
        ['route add svc-a / http://aaa.com/ weight 0.5000 opts "strip=/foo"',
         'route add svc-b / http://bbb.com/ weight 0.5000 opts "strip=/bar"']),
    row("1 service, 1 prefix, 2 instances with different options",
        ['route add svc-a / http://aaa.com/ opts "strip=/foo"', 'route add svc-b / http://bbb.com/ opts "strip=/bar"'],
        ['route add svc-a / http://aaa.com/ weight 0.5000 opts "strip=/foo"',
         'route add svc-b / http://bbb.com/ weight 0.5000 opts "strip=/bar"']),
    row("2 service, 1 prefix", ["route add svc-a / http://aaa.com/", "route add svc-b / http://bbb.com/"],
        ["route add svc-a / http://aaa.com/ weight 0.5000", "route add svc-b / http://bbb.com/ weight 0.5000"]),
    row("1 service, 2 prefix", ["route add svc-a /one http://aaa.com/", "route add svc-a /two http://aaa.com/"],
        ["route add svc-a /two http://aaa.com/ weight 1.0000", "route add svc-a /one http://aaa.com/ weight 1.0000"]),
    row("2 service, 2 prefix", ["route add svc-a /a http://aaa.com/", "route add svc-b /b http://bbb.com/"],
        ["route add svc-b /b http://bbb.com/ weight 1.0000", "route add svc-a /a http://aaa.com/ weight 1.0000"]),
    row("sort by more specific prefix", ["route add svc-a / http://aaa.com/", "route add svc-b /b http://bbb.com/"],
        ["route add svc-b /b http://bbb.com/ weight 1.0000", "route add svc-a / http://aaa.com/ weight 1.0000"]),
    row("sort prefix with host before prefix without host",
        ["route add svc-a / http://aaa.com/", "route add svc-b b.com/ http://bbb.com/"],
        ["route add svc-b b.com/ http://bbb.com/ weight 1.0000", "route add svc-a / http://aaa.com/ weight 1.0000"]),
    row("add more specific prefix to existing host",
        ["route add svc-a a.com/ http://aaa.com/", "route add svc-a a.com/a http://aaa.com/"],
        ["route add svc-a a.com/a http://aaa.com/ weight 1.0000", "route add svc-a a.com/ http://aaa.com/ weight 1.0000"]),
    row("delete route by service, path and target",
        ["route add svc-a / http://aaa.com/", "route add svc-b / http://bbb.com/", "route del svc-b / http://bbb.com/"],
        ["route add svc-a / http://aaa.com/ weight 1.0000"]),
    row("delete route by service and path",
        ["route add svc-a / http://aaa.com/", "route add svc-a / http://aaa.com:2222/",
         "route add svc-b / http://bbb.com/", "route del svc-a /"],
        ["route add svc-b / http://bbb.com/ weight 1.0000"]),
    row("delete route by service",
        ["route add svc-a /a http://aaa.com/", "route add svc-a / http://aaa.com/", "route add svc-b / http://bbb.com/",
         "route del svc-a"],
        ["route add svc-b / http://bbb.com/ weight 1.0000"]),
    row("delete route by service and tags",
        ['route add svc-a /a http://aaa.com/ tags "a,b"', 'route add svc-a /  http://aaa.com/ tags "b,c"',
         'route add svc-b /  http://bbb.com/ tags "c,d"', 'route del svc-a tags "a,b"'],
        ['route add svc-a / http://aaa.com/ weight 0.5000 tags "b,c"',
         'route add svc-b / http://bbb.com/ weight 0.5000 tags "c,d"']),
    row("delete route by tags",
        ['route add svc-a /a http://aaa.com/ tags "a,b"', 'route add svc-a /  http://aaa.com/ tags "b,c"',
         'route add svc-b /  http://bbb.com/ tags "c,d"', 'route del tags "b"'],
        ['route add svc-b / http://bbb.com/ weight 1.0000 tags "c,d"']),
    row("weigh fixed weight 0 -> auto distribution", ["route add svc / http://bar:111/ weight 0"],
        ["route add svc / http://bar:111/ weight 1.0000"]),
    row("weigh only fixed weights and sum(fixedWeight) < 1 -> normalize to 100%",
        ["route add svc / http://bar:111/ weight 0.2", "route add svc / http://bar:222/ weight 0.3"],
        ["route add svc / http://bar:111/ weight 0.4000", "route add svc / http://bar:222/ weight 0.6000"]),
    row("weigh only fixed weights and sum(fixedWeight) > 1 -> normalize to 100%",
        ["route add svc / http://bar:111/ weight 2", "route add svc / http://bar:222/ weight 3"],
        ["route add svc / http://bar:111/ weight 0.4000", "route add svc / http://bar:222/ weight 0.6000"]),
    row("weigh multiple entries for same instance with no fixed weight -> de-duplication",
        ["route add svc / http://bar:111/", "route add svc / http://bar:111/"],
        ["route add svc / http://bar:111/ weight 1.0000"]),
    row("weigh multiple entries with no fixed weight -> even distribution",
        ["route add svc / http://bar:111/", "route add svc / http://bar:222/"],
        ["route add svc / http://bar:111/ weight 0.5000", "route add svc / http://bar:222/ weight 0.5000"]),
    row("weigh multiple entries with de-dup and no fixed weight -> even distribution",
        ["route add svc / http://bar:111/", "route add svc / http://bar:111/", "route add svc / http://bar:222/"],
        ["route add svc / http://bar:111/ weight 0.5000", "route add svc / http://bar:222/ weight 0.5000"]),
    row("weigh mixed fixed and auto weights -> even distribution of remaining weight across non-fixed weighted targets",
        ["route add svc / http://bar:111/", "route add svc / http://bar:222/", "route add svc / http://bar:333/ weight 0.5"],
        ["route add svc / http://bar:111/ weight 0.2500", "route add svc / http://bar:222/ weight 0.2500",
         "route add svc / http://bar:333/ weight 0.5000"]),
    row("weigh fixed weight == 100% -> route only to fixed weighted targets",
        ["route add svc / http://bar:111/", "route add svc / http://bar:222/ weight 0.2500",
         "route add svc / http://bar:333/ weight 0.7500"],
        ["route add svc / http://bar:222/ weight 0.2500", "route add svc / http://bar:333/ weight 0.7500"]),
    row("weigh fixed weight > 100%  -> route only to fixed weighted targets and normalize weight",
        ["route add svc / http://bar:111/", "route add svc / http://bar:222/ weight 1",
         "route add svc / http://bar:333/ weight 3"],
        ["route add svc / http://bar:222/ weight 0.2500", "route add svc / http://bar:333/ weight 0.7500"]),
    row("weigh dynamic weight matched on service name",
        ["route add svca / http://bar:111/", "route add svcb / http://bar:222/", "route add svcb / http://bar:333/",
         "route weight svcb / weight 0.1"],
        ["route add svca / http://bar:111/ weight 0.9000", "route add svcb / http://bar:222/ weight 0.0500",
         "route add svcb / http://bar:333/ weight 0.0500"]),
    row("weigh dynamic weight matched on service name and tags",
        ['route add svc / http://bar:111/ tags "a"', 'route add svc / http://bar:222/ tags "b"',
         'route add svc / http://bar:333/ tags "b"', 'route weight svc / weight 0.1 tags "b"'],
        ['route add svc / http://bar:111/ weight 0.9000 tags "a"', 'route add svc / http://bar:222/ weight 0.0500 tags "b"',
         'route add svc / http://bar:333/ weight 0.0500 tags "b"']),
    row("weigh dynamic weight matched on tags",
        ['route add svca / http://bar:111/ tags "a"', 'route add svcb / http://bar:222/ tags "b"',
         'route add svcb / http://bar:333/ tags "b"', 'route weight / weight 0.1 tags "b"'],
        ['route add svca / http://bar:111/ weight 0.9000 tags "a"', 'route add svcb / http://bar:222/ weight 0.0500 tags "b"',
         'route add svcb / http://bar:333/ weight 0.0500 tags "b"']),
    row("weigh more than 1000 routes", gen(1234, "route add svc / http://bar:%d/"),
        gen(1234, "route add svc / http://bar:%d/ weight 0.0008")),
    row("weigh more than 1000 routes with a fixed route target",
        [*gen(1234, "route add svc / http://bar:%d/"), 'route add svc / http://static:12345/ tags "a"',
         'route weight svc / weight 0.2 tags "a"'],
        [*gen(1234, "route add svc / http://bar:%d/ weight 0.0006"),
         'route add svc / http://static:12345/ weight 0.2000 tags "a"']),
]


@pytest.mark.parametrize(("lines", "want", "outcome"), table(FILE, "TestTableParse", PARSE))
def test_table_parse(lines: list[str], want: list[str], outcome: Outcome) -> None:
    tbl = build("\n".join(lines))
    assert config_lines(tbl) == outcome.want(want)
    # fabio then counts each target on the route's rr ring: its share must be within 2% of its weight.
    # Our rr picker walks the same shares (a smooth weighted ring of at most ~1,600 slots here, or the target
    # list for equal weights), so 2,000 turns measure them.
    for src in {line.split()[3] for line in want}:
        route = tbl.lookup(*hostpath(src))
        assert route is not None
        picks = Counter(route.pick("rr").url for _ in range(2000))
        for line in want:
            f = line.split()
            if f[3] == src:
                assert abs(picks[f[4]] / 2000 - float(f[6])) <= 0.02, line


NORMALIZE = [
    row("0 foo.com", "foo.com", False, "foo.com"),
    row("1 foo.com:80", "foo.com:80", False, "foo.com"),
    row("2 foo.com:81", "foo.com:81", False, "foo.com:81"),
    row("3 foo.com TLS", "foo.com", True, "foo.com"),
    row("4 foo.com:443 TLS", "foo.com:443", True, "foo.com"),
    row("5 foo.com:444 TLS", "foo.com:444", True, "foo.com:444"),
]

_HOSTS = build("\n".join(f"route add svc {h}/ http://{h.replace(':', '-')}:1/" for h in
                         ("foo.com", "foo.com:81", "foo.com:444")))


@pytest.mark.parametrize(("host", "tls", "want", "outcome"), table(FILE, "TestNormalizeHost", NORMALIZE))
def test_normalize_host(host: str, tls: bool, want: str, outcome: Outcome) -> None:
    """fabio's normalizeHost drops the scheme's default port; here that shows as the table host matched."""
    route = _HOSTS.lookup(host, "/", tls=tls)
    assert route is not None and route.host == outcome.want(want)


ISSUE_448 = """
route add mock foo.com:80/ https://foo.com/ opts "redirect=301"
route add mock aaa.com:80/ http://bbb.com/ opts "redirect=301"
route add mock ccc.com:443/bar https://ccc.com/baz opts "redirect=301"
route add mock / http://foo.com/
"""

LOOKUP_448 = [
    row("0 empty upstream header should follow redirect", "foo.com", "/", False, "https://foo.com/"),
    row("1 upstream http request to same host and path should follow redirect", "foo.com", "/", False,
        "https://foo.com/"),
    row("2 upstream https request to same host and path should NOT follow redirect", "foo.com", "/", True,
        "http://foo.com/"),
    row("3 upstream http request to different http host should follow redirect", "aaa.com", "/", False,
        "http://bbb.com/"),
    row("4 upstream https request to same https host with different path should follow redirect", "ccc.com", "/bar",
        True, "https://ccc.com/baz"),
]


@pytest.mark.parametrize(("host", "path", "tls", "dst", "outcome"), table(FILE, "TestTableLookupIssue448", LOOKUP_448))
def test_table_lookup_issue_448(host: str, path: str, tls: bool, dst: str, outcome: Outcome) -> None:
    """The X-Forwarded-Proto of these rows does not change the target (no row is a redirect loop)."""
    route = build(ISSUE_448).lookup(host, path, tls=tls)
    assert route is not None and route.targets[0].url == outcome.want(dst)


LOOKUP_ROUTES = """
route add svc / http://foo.com:800
route add svc /foo http://foo.com:900
route add svc abc.com/ http://foo.com:1000
route add svc abc.com/foo http://foo.com:1500
route add svc abc.com/foo/ http://foo.com:2000
route add svc abc.com/foo/bar http://foo.com:2500
route add svc abc.com/foo/bar/ http://foo.com:3000
route add svc z.abc.com/foo/ http://foo.com:3100
route add svc *.abc.com/ http://foo.com:4000
route add svc *.abc.com/foo/ http://foo.com:5000
route add svc *.aaa.abc.com/ http://foo.com:6000
route add svc *.bbb.abc.com/ http://foo.com:6100
route add svc xyz.com:80/ https://xyz.com
"""

_L = [  # host, path, tls, dst: in fabio's order, numbered as its error messages number them
    ("abc.com", "/", False, "http://foo.com:1000"), ("abc.com", "/bar", False, "http://foo.com:1000"),
    ("abc.com", "/foo", False, "http://foo.com:1500"), ("abc.com", "/foo/", False, "http://foo.com:2000"),
    ("abc.com", "/foo/bar", False, "http://foo.com:2500"), ("abc.com", "/foo/bar/", False, "http://foo.com:3000"),
    ("def.com", "/", False, "http://foo.com:800"), ("def.com", "/bar", False, "http://foo.com:800"),
    ("def.com", "/foo", False, "http://foo.com:900"),
    ("abc.com:80", "/", False, "http://foo.com:1000"), ("abc.com:443", "/", True, "http://foo.com:1000"),
    ("abc.com:443", "/", False, "http://foo.com:800"), ("abc.com:80", "/", True, "http://foo.com:800"),
    ("x.abc.com", "/", False, "http://foo.com:4000"), ("y.abc.com", "/abc", False, "http://foo.com:4000"),
    ("x.abc.com", "/foo/", False, "http://foo.com:5000"), ("y.abc.com", "/foo/", False, "http://foo.com:5000"),
    (".abc.com", "/foo/", False, "http://foo.com:5000"), ("x.y.abc.com", "/foo/", False, "http://foo.com:5000"),
    ("y.abc.com:80", "/foo/", False, "http://foo.com:5000"), ("x.aaa.abc.com", "/", False, "http://foo.com:6000"),
    ("x.aaa.abc.com", "/foo", False, "http://foo.com:6000"), ("x.bbb.abc.com", "/", False, "http://foo.com:6100"),
    ("x.bbb.abc.com", "/foo", False, "http://foo.com:6100"), ("y.abc.com:443", "/foo/", True, "http://foo.com:5000"),
    ("z.abc.com", "/foo/", False, "http://foo.com:3100"),
    ("xyz.com", "/", False, "https://xyz.com"),
]
LOOKUP = [row(f"{i} {h}{p}{' TLS' if tls else ''}", h, p, tls, dst) for i, (h, p, tls, dst) in enumerate(_L)]


@pytest.mark.parametrize(("host", "path", "tls", "dst", "outcome"), table(FILE, "TestTableLookup", LOOKUP))
def test_table_lookup(host: str, path: str, tls: bool, dst: str, outcome: Outcome) -> None:
    route = build(LOOKUP_ROUTES).lookup(host, path, tls=tls)
    assert route is not None and route.targets[0].url == outcome.want(dst)


ROUTES_656 = """
route add my-service example.com:80/ https://example.com$path opts "redirect=301"
route add my-service example.com/ http://127.0.0.1:3000/
"""


@pytest.mark.parametrize("outcome", table(FILE, "TestTableLookup_656", [
    row("a typical HTTPS redirect")]))
def test_table_lookup_656(outcome: Outcome) -> None:
    """The common "redirect plain HTTP" setup redirects, with glob matching on and off alike."""
    for glob in (True, False):
        route = build(ROUTES_656, glob=glob).lookup("example.com", "/foo")
        assert route is not None
        t = route.targets[0]
        assert t.redirect_code == 301
        assert redirect.location(t.redirect_url, "/foo", "example.com", b"") == "https://example.com/foo"


@pytest.mark.parametrize("outcome", table(FILE, "TestNewTableCustom", [row("three route defs")]))
def test_new_table_custom(outcome: Outcome) -> None:
    """fabio's NewTableCustom takes RouteDef values, not text: here RouteCmd values."""
    opts = (("tlsskipverify", "true"), ("proto", "http"))
    defs = [RouteCmd("add", "service1", "app.com", "http://10.1.1.1:8080", 0.5, ("tag1", "tag2"), opts),
            RouteCmd("add", "service1", "app.com", "http://10.1.1.2:8080", 0.5, ("tag1", "tag2"), opts),
            RouteCmd("add", "service2", "app.com", "http://10.1.1.3:8080", 0.25, ("tag1", "tag2"), opts)]
    tbl, errors = TableBuilder().update(manual=defs)
    assert errors == []
    text = tbl.render()
    for d in defs:
        assert d.dst in text


DUMP = """+-- host=
|   |-- path=/foo
|   |    +-- addr=foo.com:900 weight 1.00 slots 1/1
|   +-- path=/
|       +-- addr=foo.com:800 weight 1.00 slots 1/1
+-- host=abc.com
    +-- path=/
        +-- addr=foo.com:1000 weight 1.00 slots 1/1
"""


@pytest.mark.parametrize("outcome", table(FILE, "TestTable_Dump", [row("three routes")]))
def test_table_dump(outcome: Outcome) -> None:
    tbl = build("route add svc / http://foo.com:800\nroute add svc /foo http://foo.com:900\n"
                "route add svc abc.com/ http://foo.com:1000")
    assert tbl.dump() == outcome.want(DUMP)
