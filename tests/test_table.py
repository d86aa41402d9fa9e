"""Table building, weights, lookup, pickers, rendering and incremental updates."""

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.table.builder import TableBuilder
from router.table.routecmd import RouteCmd, parse
from router.table.routes import Table
from router.table.target import Target, parse_duration


def build(services: str = "", manual: str = "", **kw) -> tuple[Table, list]:
    """Build from text: each service text line's service name is its key; manual text is the override."""
    cmds, errs = parse(services, "svc")
    assert errs == []
    by_svc: dict[str, list[RouteCmd]] = {}
    for c in cmds:
        by_svc.setdefault(c.service, []).append(c)
    mcmds, merrs = parse(manual, "kv:fabio/config")
    assert merrs == []
    return TableBuilder(**kw).update(services=by_svc, manual=mcmds)


def weights(t: Table) -> list[tuple[str, str, str, float]]:
    """(service, src, dst, weight) rows, sorted (the row order is tested by the rendering tests)."""
    return sorted((r["service"], r["src"], r["dst"], round(r["weight"], 6)) for r in t.routes())


# ---------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "services, manual, want",
    [
        # no fixed weights -> equal shares
        ("route add a / http://a1/\nroute add a / http://a2/", "",
         [("a", "/", "http://a1/", 0.5), ("a", "/", "http://a2/", 0.5)]),
        # all fixed, sum < 1 -> scaled up: 0.2+0.3 -> 0.4/0.6
        ("route add a / http://a1/ weight 0.2\nroute add b / http://b1/ weight 0.3", "",
         [("a", "/", "http://a1/", 0.4), ("b", "/", "http://b1/", 0.6)]),
        # fixed 0.5 plus two dynamic -> 0.25/0.25/0.5
        ("route add a / http://a1/\nroute add a / http://a2/\nroute add b / http://b1/ weight 0.5", "",
         [("a", "/", "http://a1/", 0.25), ("a", "/", "http://a2/", 0.25), ("b", "/", "http://b1/", 0.5)]),
        # route weight svcb / weight 0.1 with svca dynamic -> 0.9 / 0.05 / 0.05
        ("route add svca / http://a1/\nroute add svcb / http://b1/\nroute add svcb / http://b2/",
         "route weight svcb / weight 0.1",
         [("svca", "/", "http://a1/", 0.9), ("svcb", "/", "http://b1/", 0.05), ("svcb", "/", "http://b2/", 0.05)]),
        # fixed sum > 1 -> scaled down, dynamic targets starve
        ("route add a / http://a1/ weight 1.5\nroute add b / http://b1/ weight 0.5\nroute add c / http://c1/", "",
         [("a", "/", "http://a1/", 0.75), ("b", "/", "http://b1/", 0.25), ("c", "/", "http://c1/", 0.0)]),
        # route weight by tags only (tags mandatory form)
        ('route add a / http://a1/ tags "green"\nroute add a / http://a2/ tags "blue"',
         'route weight / weight 0.2 tags "green"',
         [("a", "/", "http://a1/", 0.2), ("a", "/", "http://a2/", 0.8)]),
    ],
)
def test_weights(services: str, manual: str, want: list) -> None:
    t, errs = build(services, manual)
    assert errs == []
    assert weights(t) == want


def test_route_weight_without_match_is_reported_and_rest_applied() -> None:
    t, errs = build("route add a / http://a1/", "\nroute weight nope /missing weight 0.5\nroute add m /m http://m/")
    assert [(e.line, e.reason) for e in errs] == [(2, "no route matches")]
    assert errs[0].source == "kv:fabio/config"
    assert t.lookup("h", "/m/x").targets[0].url == "http://m/"


def test_weight_error_clears_when_the_route_appears_and_returns_when_it_goes() -> None:
    b = TableBuilder()
    manual, _ = parse("route weight s /x weight 0.5", "kv")
    _, errs = b.update(manual=manual)
    assert [e.reason for e in errs] == ["no route matches"]
    t, errs = b.update(services={"s": parse("route add s /x http://s/")[0]})
    assert errs == []
    assert t.lookup("h", "/x").targets[0].fixed_weight == 0.5
    _, errs = b.update(services={"s": None})
    assert [e.reason for e in errs] == ["no route matches"]


# ------------------------------------------------------------------------------------------- build forms


@pytest.mark.parametrize(
    "manual, remaining",
    [
        ("route del a", {("b", "/"), ("b", "x.com/"), ("c", "/")}),
        ("route del a x.com/", {("a", "/"), ("b", "/"), ("b", "x.com/"), ("c", "/")}),
        ("route del a / http://a2/", {("a", "/"), ("a", "x.com/"), ("b", "/"), ("b", "x.com/"), ("c", "/")}),
        ('route del tags "t1,t2"', {("a", "/"), ("a", "x.com/"), ("b", "x.com/"), ("c", "/")}),
        ('route del tags "t1"', {("a", "/"), ("a", "x.com/"), ("b", "x.com/")}),
        ('route del c tags "t1"', {("a", "/"), ("a", "x.com/"), ("b", "/"), ("b", "x.com/")}),
        ("route del b\nroute del c", {("a", "/"), ("a", "x.com/")}),
        ("route del a\nroute del b\nroute del c", set()),
    ],
)
def test_del_forms(manual: str, remaining: set) -> None:
    services = "\n".join([
        "route add a / http://a1/",
        "route add a / http://a2/",
        "route add a X.com/ http://a3/",
        'route add b / http://b1/ tags "t1,t2"',
        "route add b x.com/ http://b2/",
        'route add c / http://c1/ tags "t1"',
    ])
    t, errs = build(services, manual)
    assert errs == []
    assert {(r["service"], r["src"]) for r in t.routes()} == remaining
    assert len(t) == len(t.routes())
    if not remaining:
        assert t.route_count == 0 and t.lookup("x.com", "/") is None


def test_add_dedups_lowercases_and_keys() -> None:
    t, _ = build("\n".join([
        "route add a Foo.COM/Bar http://a/",
        "route add a foo.com/Bar http://a/",
        "route add a foo.com http://b/",
        "route add a :1234 tcp://c:1/",
        "route add a /p http://d/ weight 0.5",
        "route add a /p http://d/ weight 0.5",
        "route add a /p http://d/",
    ]))
    assert [(r["host"], r["path"], r["dst"]) for r in t.routes()] == [
        ("", "/p", "http://d/"), ("", "/p", "http://d/"), (":1234", "", "tcp://c:1/"),
        ("foo.com", "/Bar", "http://a/"), ("foo.com", "/", "http://b/"),
    ]
    assert len(t) == 5 and t.route_count == 4
    assert t.services() == {"a"}
    assert t.lookup(":1234", "/").targets[0].port == 1


def test_manual_commands_apply_after_services_in_order() -> None:
    t, _ = build("route add a / http://a/", "route del a\nroute add a / http://z/\nroute add m /m http://m/")
    assert [(r["src"], r["dst"]) for r in t.routes()] == [("/m", "http://m/"), ("/", "http://z/")]


@pytest.mark.parametrize(
    "line, field, value",
    [
        ("route add s / http://h:81/x", "port", 81),
        ("route add s / http://h/", "port", 80),
        ("route add s / https://h/", "port", 443),
        ('route add s / http://h/ opts "proto=https"', "scheme", "https"),
        ('route add s / http://h/ opts "proto=https"', "port", 443),
        ("route add s / http://[::1]:90/", "host", "::1"),
        ('route add s / http://h/ opts "strip=/foo"', "strip", "/foo"),
        ('route add s / http://h/ opts "prepend=/bar"', "prepend", "/bar"),
        # host=dst: the target URL's host as written (Go's url.Host), resolved when the table is built
        ('route add s / http://h/ opts "host=dst"', "host_header", "h"),
        ('route add s / http://h:8080/ opts "host=dst"', "host_header", "h:8080"),
        ('route add s / http://[::1]:90/ opts "host=dst"', "host_header", "[::1]:90"),
        ('route add s / http://[fe80::1]/ opts "host=dst"', "host_header", "[fe80::1]"),
        ('route add s / http://u:p@h:81/ opts "host=dst"', "host_header", "h:81"),
        ('route add s / http://h/ opts "host=api.internal"', "host_header", "api.internal"),
        ('route add s / https://h/ opts "tlsskipverify=true"', "tls_skip_verify", True),
        ('route add s / https://e.com$path opts "redirect=301"', "redirect_code", 301),
        ('route add s / https://e.com$path opts "redirect=301"', "redirect_url", "https://e.com$path"),
        ('route add s / http://h/ opts "timeout=2s"', "timeout", 2.0),
        ('route add s / http://h/ opts "timeout=500ms"', "timeout", 0.5),
        ('route add s / http://h/ opts "foo=bar x"', "opts", {"foo": "bar", "x": ""}),
    ],
)
def test_target_fields(line: str, field: str, value: object) -> None:
    t, errs = build(line)
    assert errs == []
    target = t.lookup("any", "/").targets[0]
    assert getattr(target, field) == value


@pytest.mark.parametrize(
    "line, reason",
    [
        ("route add s / not-a-url", "invalid destination URL"),
        ("route add s / http://h:99999/", "bad port"),
        ("route add s / http://h:\u00b2/", "bad port"),  # isdigit() but not int(): stopped the whole build
        ("route add s / http://h:\u0663/", "bad port"),  # an Arabic-Indic 3: int() takes it, Go does not
        ("route add s / http:///x", "no host"),
        ('route add s / http://h/ opts "strip=foo"', "must start with '/'"),
        ('route add s / http://h/ opts "timeout=2x"', "invalid duration"),
    ],
)
def test_build_errors_skip_only_that_command(line: str, reason: str) -> None:
    cmds, _ = parse(f"route add s /ok http://ok/\n{line}", "service:s")
    t, errs = TableBuilder().update(services={"s": cmds})
    assert len(errs) == 1 and reason in errs[0].reason
    assert (errs[0].source, errs[0].line) == ("service:s", 2)
    assert [r["dst"] for r in t.routes()] == ["http://ok/"]
    _, errs = TableBuilder().update(manual=cmds)
    assert len(errs) == 1 and errs[0].line == 2


@pytest.mark.parametrize("code", ["200", "abc", "404", "3011"])
def test_bad_redirect_code_is_ignored_and_the_route_proxied(code: str, caplog: pytest.LogCaptureFixture) -> None:
    """fabio: a redirect= that is not 3xx is logged as an error and the target is an ordinary one."""
    cmds, _ = parse(f'route add s{code} /r http://h:81/ opts "redirect={code}"', "service:s")
    with caplog.at_level("ERROR", logger="router.table"):
        t, errs = TableBuilder().update(services={f"s{code}": cmds})
    assert errs == []
    target = t.lookup("any", "/r").targets[0]
    assert (target.redirect_code, target.redirect_url, target.host, target.port) == (0, "", "h", 81)
    assert target.opts["redirect"] == code  # kept, as fabio keeps it in the route's opts
    assert [r.getMessage() for r in caplog.records if f"redirect={code!r}" in r.getMessage()]


def test_service_errors_go_away_with_the_service() -> None:
    b = TableBuilder()
    _, errs = b.update(services={"s": parse("route add s / bad", "service:s")[0]})
    assert len(errs) == 1
    _, errs = b.update(services={"s": []})
    assert errs == []


@pytest.mark.parametrize("text, secs", [("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("0", 0.0), ("1.5h", 5400.0)])
def test_parse_duration(text: str, secs: float) -> None:
    assert parse_duration(text) == pytest.approx(secs)


# ----------------------------------------------------------------------------------------------- lookup

LOOKUP_TABLE = "\n".join([
    "route add s1 / http://nohost-root/",
    "route add s2 /foo http://nohost-foo/",
    "route add s3 /foo/bar http://nohost-foobar/",
    "route add s4 abc.com/ http://abc-root/",
    "route add s5 abc.com/foo http://abc-foo/",
    "route add s6 *.aaa.abc.com/ http://wild-aaa/",
    "route add s7 *.abc.com/ http://wild-abc/",
    "route add s8 z.aaa.abc.com/ http://exact-z/",
    "route add s9 xyz.com:80/ http://xyz80/",
    "route add s10 tls.com:443/ http://tls443/",
    "route add s11 *.edge.foo.com/ http://edge/",
    "route add s12 *.foo.com/ http://foo/",
    "route add s13 api.edge.foo.com/ http://api/",
    "route add s14 onlypath.com/only http://onlypath/",
])


@pytest.mark.parametrize(
    "host, path, tls, want",
    [
        ("unknown", "/", False, "http://nohost-root/"),
        ("unknown", "/foo", False, "http://nohost-foo/"),
        ("unknown", "/foo/bar/baz", False, "http://nohost-foobar/"),
        ("unknown", "/fo", False, "http://nohost-root/"),
        ("abc.com", "/foo/x", False, "http://abc-foo/"),
        ("ABC.com:80", "/x", False, "http://abc-root/"),
        ("abc.com:443", "/x", True, "http://abc-root/"),
        ("abc.com:443", "/x", False, "http://nohost-root/"),  # :443 not stripped on plain http
        ("abc.com:8080", "/x", False, "http://nohost-root/"),
        ("x.aaa.abc.com", "/foo", False, "http://wild-aaa/"),  # host decides before path
        ("x.y.abc.com", "/foo", False, "http://wild-abc/"),
        ("z.aaa.abc.com", "/", False, "http://exact-z/"),
        ("xyz.com", "/", False, "http://xyz80/"),
        ("xyz.com:80", "/", False, "http://xyz80/"),
        ("xyz.com", "/", True, "http://nohost-root/"),
        ("tls.com", "/", True, "http://tls443/"),
        ("tls.com", "/", False, "http://nohost-root/"),
        ("api.edge.foo.com", "/", False, "http://api/"),
        ("web.edge.foo.com", "/", False, "http://edge/"),
        ("web.foo.com", "/", False, "http://foo/"),
        ("onlypath.com", "/other", False, "http://nohost-root/"),  # falls through to the no-host routes
        ("onlypath.com", "/only/x", False, "http://onlypath/"),
    ],
)
def test_lookup_order(host: str, path: str, tls: bool, want: str) -> None:
    t, _ = build(LOOKUP_TABLE)
    r = t.lookup(host, path, tls=tls)
    assert r is not None and r.targets[0].url == want


def fabio_host_order(patterns: list[str], host: str) -> list[str]:
    """fabio 1.7.3's matchingHosts: the patterns that glob-match, sorted by their reversed text, descending."""
    from router.table.index import glob_regex

    hits = [p for p in patterns if glob_regex(p, None).fullmatch(host)]
    return sorted(hits, key=lambda p: p[::-1], reverse=True)


@pytest.mark.parametrize(
    "exact, pattern, host",
    [
        ("foo.com", "*foo.com", "foo.com"),              # reversed, "moc.oof*" sorts above "moc.oof"
        ("www.foo.com", "*www.foo.com", "www.foo.com"),
        ("a.foo.com", "{a,b}.foo.com", "a.foo.com"),     # "}" sorts after every host character
        ("api.foo.com", "api.foo.com*", "api.foo.com"),  # control: here fabio agrees
    ],
)
def test_exact_host_beats_any_glob(exact: str, pattern: str, host: str) -> None:
    """Exact host first, always (fabio #506/#786). fabio's reversed-string sort gets some of these wrong."""
    t, _ = build(f"route add exact {exact}/ http://exact/\nroute add glob {pattern}/ http://glob/")
    assert t.lookup(host, "/").targets[0].url == "http://exact/"
    fabio = fabio_host_order([exact, pattern], host)
    assert set(fabio) == {exact, pattern}  # both match the host
    if pattern != "api.foo.com*":
        assert fabio[0] == pattern  # fabio would route to the glob


@pytest.mark.parametrize(
    "host, want",
    [("api.edge.foo.com", "http://edge/"), ("a.b.edge.foo.com", "http://edge/"), ("api.foo.com", "http://foo/")],
)
def test_longer_wildcard_first_agrees_with_fabio(host: str, want: str) -> None:
    """For `*.` wildcards fabio's order (since 1.5.7, #506) is right too: the longer suffix wins."""
    t, _ = build("route add a *.foo.com/ http://foo/\nroute add b *.edge.foo.com/ http://edge/\n"
                 "route add c *.com/ http://com/")
    assert t.lookup(host, "/").targets[0].url == want
    first = fabio_host_order(["*.foo.com", "*.edge.foo.com", "*.com"], host)[0]
    assert {"*.foo.com": "http://foo/", "*.edge.foo.com": "http://edge/"}[first] == want


def test_lookup_without_glob_matching_treats_patterns_literally() -> None:
    t, _ = build(LOOKUP_TABLE, glob_matching=False)
    assert t.lookup("x.y.abc.com", "/foo").targets[0].url == "http://nohost-foo/"
    assert t.lookup("*.abc.com", "/").targets[0].url == "http://wild-abc/"


def test_lookup_without_any_match() -> None:
    t, _ = build("route add s a.com/x http://a/")
    assert t.lookup("a.com", "/y") is None
    assert t.lookup("b.com", "/x") is None


def test_general_glob_hosts_and_catch_all() -> None:
    t, _ = build("route add a app-?.com/ http://q/\nroute add b * http://star/\nroute add c *.com/ http://com/")
    assert t.lookup("app-1.com", "/").targets[0].url == "http://q/"
    assert t.lookup("x.com", "/").targets[0].url == "http://com/"
    assert t.lookup("x.org", "/").targets[0].url == "http://star/"


def test_iprefix_takes_the_longest_match() -> None:
    """fabio tries paths in case-sensitive reverse order, so "/foo" comes before "/FOO/bar" and would win
    for /FOO/bar/x; we take the longest case-insensitive prefix (docs/compat.md)."""
    t, _ = build("route add a /foo http://foo/\nroute add b /FOO/bar http://foobar/", matcher="iprefix")
    assert t.lookup("h", "/FOO/bar/x").targets[0].url == "http://foobar/"
    assert sorted(["/foo", "/FOO/bar"], reverse=True)[0] == "/foo"  # fabio's first candidate
    t, _ = build("route add a /foo http://lower/\nroute add b /Foo http://upper/", matcher="iprefix")
    assert t.lookup("h", "/FOO").targets[0].url == "http://lower/"  # equal but for case: fabio's first


@pytest.mark.parametrize(
    "path, want",
    [("/FOO/x", "http://foo/"), ("/foo", "http://foo/"), ("/Foo/Bar/z", "http://foobar/"), ("/other", None)],
)
def test_iprefix(path: str, want: str | None) -> None:
    t, _ = build("route add a /foo http://foo/\nroute add b /foo/bar http://foobar/", matcher="iprefix")
    r = t.lookup("h", path)
    assert (r.targets[0].url if r else None) == want


@pytest.mark.parametrize(
    "path, want",
    [
        ("/foo", "http://exact/"),
        ("/fools", None),
        ("/api/v1/users", "http://one/"),
        ("/api/v1/users/7", "http://deep/"),
        ("/img/a.png", "http://png/"),
        ("/img/x/a.png", None),
    ],
)
def test_glob_matcher(path: str, want: str | None) -> None:
    t, _ = build("\n".join([
        "route add a /foo http://exact/",
        "route add b /api/*/users http://one/",
        "route add c /api/**/users/* http://deep/",
        "route add d /img/*.png http://png/",
    ]), matcher="glob")
    r = t.lookup("h", path)
    assert (r.targets[0].url if r else None) == want


def test_bad_path_glob_is_a_line_error_with_the_glob_matcher() -> None:
    cmds, _ = parse("route add a /ok http://a/\nroute add b /x[ http://b/", "service:x")
    t, errs = TableBuilder(matcher="glob").update(services={"x": cmds})
    assert [(e.line, "unclosed '['" in e.reason) for e in errs] == [(2, True)]
    assert t.lookup("h", "/ok").targets[0].url == "http://a/"
    _, errs = TableBuilder(matcher="glob").update(manual=cmds)
    assert [e.line for e in errs] == [2]


def test_targets_are_hashable_frozen_dataclasses() -> None:
    import dataclasses

    t, _ = build('route add a / http://a/ opts "k=v"')
    target = t.lookup("h", "/").targets[0]
    assert type(target) is Target
    assert {target: 1}[target] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.port = 1  # type: ignore[misc]
    assert dataclasses.replace(target, port=81).port == 81
    assert target == Target(**{f.name: getattr(target, f.name) for f in dataclasses.fields(Target)})


def test_lookup_cost_structure_is_per_host() -> None:
    """Many routes on other hosts must not be looked at: the candidate hosts are found by dict lookups."""
    services = "\n".join(f"route add s{i} h{i}.com/p{i} http://x{i}/" for i in range(2000))
    t, _ = build(services + "\nroute add w *.h7.com/ http://w/")
    assert t.lookup("h1999.com", "/p1999/z").targets[0].url == "http://x1999/"
    assert t.lookup("a.h7.com", "/").targets[0].url == "http://w/"
    assert len(t._plain.exact) == 2000 and len(t._plain.wild) == 1


# ---------------------------------------------------------------------------------------------- pickers


def test_rr_equal_weights_is_exact() -> None:
    t, _ = build("route add a / http://a/\nroute add a / http://b/\nroute add a / http://c/")
    r = t.lookup("h", "/")
    assert Counter(r.pick("rr").url for _ in range(30)) == {"http://a/": 10, "http://b/": 10, "http://c/": 10}


def test_rr_unequal_weights_follows_the_shares() -> None:
    t, _ = build("route add a / http://a/ weight 0.2\nroute add b / http://b/ weight 0.8")
    r = t.lookup("h", "/")
    got = Counter(r.pick("rr").url for _ in range(500))
    assert got == {"http://a/": 100, "http://b/": 400}


def test_rnd_distribution_follows_weights() -> None:
    random.seed(7)
    t, _ = build("route add svca / http://a/\nroute add svcb / http://b1/\nroute add svcb / http://b2/",
                 "route weight svcb / weight 0.1")
    r = t.lookup("h", "/")
    n = 20000
    got = Counter(r.pick("rnd").url for _ in range(n))
    assert abs(got["http://a/"] / n - 0.9) < 0.02
    assert abs(got["http://b1/"] / n - 0.05) < 0.01
    assert abs(got["http://b2/"] / n - 0.05) < 0.01


def test_zero_weight_targets_are_never_picked() -> None:
    t, _ = build("route add a / http://a/ weight 1\nroute add b / http://b/")
    r = t.lookup("h", "/")
    assert [(x.service, x.weight) for x in r.targets] == [("b", 0.0), ("a", 1.0)]
    assert {r.pick(s).url for s in ("rr", "rnd") for _ in range(50)} == {"http://a/"}


def test_rnd_equal_weights_covers_all_targets() -> None:
    random.seed(1)
    t, _ = build("route add a / http://a/\nroute add a / http://b/")
    got = Counter(t.lookup("h", "/").pick().url for _ in range(2000))
    assert set(got) == {"http://a/", "http://b/"} and min(got.values()) > 800


# -------------------------------------------------------------------------------------------- rendering


def test_render_format_and_order() -> None:
    t, _ = build("\n".join([
        "route add a / http://a/",
        "route add a /z http://z/",
        "route add b b.com/ http://b/ weight 0.5",
        'route add c c.com/ http://c/ tags "x,y" opts "strip=/c host=dst"',
        "route add d / http://d/ weight 1",
    ]))
    assert t.render() == "\n".join([
        'route add c c.com/ http://c/ tags "x,y" opts "host=dst strip=/c"',
        "route add b b.com/ http://b/ weight 0.5000",
        "route add a /z http://z/",
        "route add d / http://d/ weight 1.0000",
    ]) + "\n"  # http://a/ has weight 0 next to a fixed weight of 1: not rendered


def fabio_render(service_lines: list[str], manual_lines: list[str]) -> str:
    """fabio's Table.String() for these lines (no weights): the service lines sorted in reverse, then the
    manual ones, added in that order; hosts descending ("" last), paths descending, targets as added."""
    routes: dict[tuple[str, str], list[str]] = {}
    seen = set()
    for line in sorted(service_lines, reverse=True) + manual_lines:
        _, _, svc, src, dst, *rest = line.split(" ")
        host, path = (src.split("/", 1)[0], "/" + src.split("/", 1)[1]) if "/" in src else (src, "/")
        if (host, path, svc, dst) in seen:
            continue
        seen.add((host, path, svc, dst))
        routes.setdefault((host, path), []).append(" ".join(["route add", svc, host + path, dst, *rest]))
    keys = sorted(routes, key=lambda k: (k[0] != "", k[0], k[1]), reverse=True)
    return "".join(line + "\n" for k in keys for line in routes[k])


RENDER_SERVICES = [
    "route add web / http://10.0.0.1:80/",
    "route add web / http://10.0.0.2:80/",
    "route add web-api / http://10.0.0.3:80/",
    "route add api / http://10.0.0.9:80/",
    "route add web a.com/ http://10.0.0.1:80/",
    'route add api a.com/ http://10.0.0.9:80/ tags "x"',
    "route add api a.com/ http://10.0.0.10:80/",
    "route add web a.com/x http://10.0.0.2:80/",
]


def test_render_target_order_is_fabios() -> None:
    """Targets of a route: service lines in reverse order (web-api > web: "-" sorts after " "), then manual."""
    t, errs = build("\n".join(reversed(RENDER_SERVICES)), "route add zz / http://m/\nroute add aa / http://n/")
    assert errs == []
    want = "\n".join([
        "route add web a.com/x http://10.0.0.2:80/",
        "route add web a.com/ http://10.0.0.1:80/",
        'route add api a.com/ http://10.0.0.9:80/ tags "x"',
        "route add api a.com/ http://10.0.0.10:80/",
        "route add web-api / http://10.0.0.3:80/",
        "route add web / http://10.0.0.2:80/",
        "route add web / http://10.0.0.1:80/",
        "route add api / http://10.0.0.9:80/",
        "route add zz / http://m/",
        "route add aa / http://n/",
    ]) + "\n"
    assert t.render() == want
    assert t.render() == fabio_render(RENDER_SERVICES, ["route add zz / http://m/", "route add aa / http://n/"])
    assert [r["dst"] for r in t.routes() if r["src"] == "/"] == [  # /api/routes rows: the same order
        "http://10.0.0.3:80/", "http://10.0.0.2:80/", "http://10.0.0.1:80/", "http://10.0.0.9:80/",
        "http://m/", "http://n/"]


@pytest.mark.parametrize("seed", range(20))
def test_render_matches_fabio_for_random_services(seed: int) -> None:
    rng = random.Random(seed)
    names = ["a", "ab", "a-b", "b", "b.c", "svc", "svc2", "svc-x"]
    srcs = ["/", "/p", "/p/q", "x.com/", "x.com/p", "*.x.com/", "y.x.com/"]
    lines = [f"route add {rng.choice(names)} {rng.choice(srcs)} http://10.0.{rng.randrange(3)}.{rng.randrange(12)}:80/"
             for _ in range(rng.randrange(1, 30))]
    manual = [f"route add m{i} {rng.choice(srcs)} http://m{i}/" for i in range(rng.randrange(3))]
    rng.shuffle(lines)
    t, errs = build("\n".join(lines), "\n".join(manual))
    assert errs == []
    assert t.render() == fabio_render(lines, manual)


def test_routes_rows() -> None:
    t, _ = build('route add a x.com/p http://a/ tags "t" opts "b=2 a=1"\nroute add b /q http://b/')
    assert t.routes() == [
        {"service": "b", "host": "", "path": "/q", "src": "/q", "dst": "http://b/", "opts": "", "cmd": "route add",
         "weight": 1.0, "rate1": 0, "pct99": 0},
        {"service": "a", "host": "x.com", "path": "/p", "src": "x.com/p", "dst": "http://a/", "opts": "a=1 b=2",
         "cmd": "route add", "tags": ["t"], "weight": 1.0, "rate1": 0, "pct99": 0},
    ]


def test_render_round_trip() -> None:
    t, _ = build(LOOKUP_TABLE + "\nroute add q /w http://w1/ weight 0.3\nroute add q /w http://w2/",
                 "route weight s1 / weight 0.5")
    again, errs = build(t.render())
    assert errs == []
    assert again.render() == t.render()


# ----------------------------------------------------------------------------------------- incremental


def _random_service(rng: random.Random, name: str) -> list[RouteCmd]:
    hosts = ["", "a.com", "b.com", "*.a.com", "x.a.com", "c.com:80"]
    out = []
    for _ in range(rng.randrange(0, 5)):
        src = rng.choice(hosts) + rng.choice(["/", "/p", "/p/q", "/r"])
        w = rng.choice([0, 0, 0, 0.2, 0.5])
        tags = rng.choice([(), ("green",), ("blue", "green")])
        out.append(RouteCmd("add", name, src, f"http://{name}-{rng.randrange(3)}/", w, tags, source=f"service:{name}"))
    if rng.random() < 0.1:
        out.append(RouteCmd("add", name, "/bad", "bad-url", source=f"service:{name}"))
    return out


MANUAL = parse("\n".join([
    "route weight s1 a.com/p weight 0.3",
    'route del tags "blue"',
    "route add m /p http://m/",
    "route del s2 b.com/r",
    'route weight /p weight 0.5 tags "green"',
    "route del s3",
]), "kv")[0]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("manual", [[], MANUAL])
def test_incremental_equals_full_rebuild(seed: int, manual: list) -> None:
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(6)]
    inc = TableBuilder()
    inc.update(manual=manual)
    current: dict[str, list[RouteCmd]] = {}
    for step in range(25):
        changed = {n: (_random_service(rng, n) if rng.random() < 0.8 else None) for n in rng.sample(names, 2)}
        new_manual = None
        if step == 12:
            new_manual = manual[:3]
            manual = new_manual
        t_inc, e_inc = inc.update(services=changed, manual=new_manual)
        current.update(changed)
        t_full, e_full = TableBuilder().update(services=current, manual=manual)
        assert t_inc.render() == t_full.render()
        assert t_inc.routes() == t_full.routes()
        assert (len(t_inc), t_inc.route_count) == (len(t_full), t_full.route_count)
        assert sorted(map(str, e_inc)) == sorted(map(str, e_full))
        for host in ["a.com", "x.a.com", "y.a.com", "c.com", "zz"]:
            for path in ["/", "/p/q/z", "/r"]:
                a, b = t_inc.lookup(host, path), t_full.lookup(host, path)
                assert (a and (a.host, a.path, a.targets)) == (b and (b.host, b.path, b.targets))


def test_update_does_not_mutate_returned_tables_and_shares_unchanged_hosts() -> None:
    b = TableBuilder()
    t1, _ = b.update(services={"a": parse("route add a a.com/ http://a/")[0],
                               "b": parse("route add b b.com/ http://b/")[0]})
    before = t1.render()
    t2, _ = b.update(services={"a": parse("route add a a.com/ http://a2/")[0]})
    assert t1.render() == before
    assert t2.render() != before
    assert t1._hosts["b.com"] is t2._hosts["b.com"]
    assert t1._hosts["a.com"] is not t2._hosts["a.com"]
    t3, _ = b.update(services={"a": None})
    assert t3.lookup("a.com", "/") is None and t2.lookup("a.com", "/") is not None
    assert t3.services() == {"b"}


def test_catch_all_redirect_host_pattern() -> None:
    t, _ = build('route add redirect *:80/ https://$host$path opts "redirect=301"\nroute add s a.com/ http://a/')
    r = t.lookup("other.org", "/x")
    assert r is not None and r.targets[0].redirect_code == 301 and r.targets[0].redirect_url == "https://$host$path"
    assert t.lookup("a.com", "/").targets[0].url == "http://a/"
    assert t.lookup("other.org", "/x", tls=True) is None  # *:80 stays *:80 on TLS: needs a literal ":80" suffix


def test_route_without_targets_picks_none() -> None:
    from router.table.route import Route

    assert Route("h", "/", ()).pick() is None
    assert Route("h", "/", ()).pick("rr") is None


def test_rr_ring_keeps_tiny_weights() -> None:
    t, _ = build("route add a / http://a/ weight 0.001\nroute add b / http://b/ weight 0.999")
    r = t.lookup("h", "/")
    ring_len = len(r._build_ring())
    assert ring_len <= 1000
    got = Counter(r.pick("rr").url for _ in range(ring_len))
    assert got["http://a/"] == 1 and got["http://b/"] == ring_len - 1


def test_unchanged_update_returns_the_same_table() -> None:
    b = TableBuilder()
    cmds = parse("route add a / http://a/")[0]
    t1, _ = b.update(services={"a": cmds}, manual=[])
    t2, _ = b.update(services={"a": list(cmds)}, manual=[])
    assert t2 is t1


def test_a_rejected_line_never_displaces_its_valid_twin() -> None:
    """Two tags of one instance on one route, the same target, one with a bad option: the bad line is
    reported and skipped, and the valid one routes (found by the property test over random tags)."""
    good = RouteCmd("add", "svc", "/w", "http://10.0.0.1:8080/", weight=0.5, source="service:svc")
    bad = RouteCmd("add", "svc", "/w", "http://10.0.0.1:8080/", weight=0.5, opts=(("timeout", "xx"),),
                   source="service:svc")
    for cmds in ([good, bad], [bad, good]):
        table, errors = TableBuilder().update({"svc": cmds})
        route = table.lookup("", "/w")
        assert route is not None and [t.url for t in route.targets] == ["http://10.0.0.1:8080/"]
        assert [e.reason for e in errors] == ["invalid duration 'xx'"]


# ------------------------------------------------------------------------- prefix index against a naive rule

_PATH_CHARS = st.sampled_from(["/", "a", "b"])
_PATHS = st.builds(lambda s: "/" + s, st.text(_PATH_CHARS, max_size=5))


@given(st.lists(st.lists(_PATHS, max_size=6), min_size=1, max_size=4), st.lists(_PATHS, min_size=1, max_size=12))
def test_prefix_lookup_is_the_longest_string_prefix(generations: list[list[str]], requests: list[str]) -> None:
    """The prefix index (second-slash position + length, router/table/index.py `len_key`) must pick what plain
    longest-string-prefix picks -- also "/a" for "/ab/x" -- after routes come and go incrementally."""
    b = TableBuilder()
    for gen, paths in enumerate(generations):
        cmds = [RouteCmd("add", "s", f"h.com{p}", f"http://g{gen}/{i}/") for i, p in enumerate(dict.fromkeys(paths))]
        nohost = [RouteCmd("add", "n", p, "http://n/") for p in paths[:2]]
        t, errs = b.update(services={"s": cmds, "n": nohost})
        assert errs == []
        for req in requests:
            r = t.lookup("h.com", req)
            hits = [p for p in paths if req.startswith(p)]
            want = max(hits, key=len) if hits else None
            if want is None:
                nh = [p for p in paths[:2] if req.startswith(p)]
                assert (r and r.host, r and r.path) == (("", max(nh, key=len)) if nh else (None, None))
            else:
                assert r is not None and (r.host, r.path) == ("h.com", want)


def test_tcp_dynamic_ports_skip_a_host_whose_port_is_not_ascii_digits() -> None:
    """fabio's tcp-dynamic listeners come from table hosts `ip:port`; a tag with a port that Python's isdigit()
    takes but int() refuses ("²") must not stop the others (router/run/edge.py)."""
    from router.run.edge import tcp_route_ports

    cmds, errs = parse("route add a :7001 tcp://127.0.0.1:5001\nroute add b :\u00b2 tcp://127.0.0.1:5002", "svc")
    assert errs == []
    t, _ = TableBuilder().update(services={"a": cmds[:1], "b": cmds[1:]})
    assert tcp_route_ports(t) == {7001}
