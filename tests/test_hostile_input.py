"""Hostile or broken input (issue: reliability): random tags, broken override text, invalid config.

Property-based: whatever the input, no exception escapes, valid routes stay routed, and every bad
item is reported on its own.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.consul.health import Instance
from registry.tags import route_cmds
from router.config.keys import KEYS
from router.config.settings import ConfigError, load
from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fuzz import examples

PREFIX = "urlprefix-"
GOOD_TAGS = ("urlprefix-/good", "urlprefix-example.com/api strip=/api", "urlprefix-/w weight=0.5")
ADDR = "10.0.0.1:8080"


# ----------------------------------------------------------------------------- tags, with an oracle
#
# Every generated tag comes with what route_cmds must make of it, known by construction:
#   ("cmd", src, dst, weight, opts)  a route tag that must become exactly this command
#   ("err", reason)                  a route tag that must be reported, naming it, with this reason
#   ("other",)                       not a route tag: it becomes one of the commands' route tags
#   ("junk",)                        random text: only "one command or one error, never an exception"

_HOST = st.text(alphabet=string.ascii_letters + string.digits + ".-", min_size=1, max_size=10)
_PATH = st.text(alphabet=string.ascii_letters + string.digits + "-._~%!*+,;=:@/", max_size=10)
_VARS = {"$DC": "dc1", "${DC}": "dc1", "$NOPE": "", "${}": ""}  # env = {"DC": "dc1"}; unknown -> ""


# Strategies are built once, here: building them inside the composites costs more than the test itself.
_ROUTE_KIND = st.sampled_from(["path", "hostpath", "var", "hostonly", "port"])
_VAR = st.sampled_from(sorted(_VARS))
_PATH_VAR = st.sampled_from(["", *sorted(_VARS)])
_PORT = st.integers(1, 65535)


@st.composite
def _valid_route(draw) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(route text, the command's expected src)."""
    kind = draw(_ROUTE_KIND)
    if kind == "path":
        p = "/" + draw(_PATH)
        return p, p
    if kind == "hostpath":
        h, p = draw(_HOST), draw(_PATH)
        return f"{h}/{p}", f"{h.lower()}/{p}"
    if kind == "var":
        var, h, p = draw(_VAR), draw(_HOST), draw(_PATH)
        sep = "" if var.endswith("}") else "."  # "$DCx" would be the variable DCx
        pvar = draw(_PATH_VAR)  # at the end of the path: nothing follows
        return f"{var}{sep}{h}/{p}{pvar}", f"{(_VARS[var] + sep + h).lower()}/{p}{_VARS.get(pvar, '')}"
    if kind == "hostonly":  # fabio 1.7.3: taken verbatim (no expansion, no lowercasing)
        h = draw(_HOST)
        return h, h
    port = str(draw(_PORT))
    return ":" + port, ":" + port


# tag-level valid options (some of them the table refuses later, e.g. timeout=xx; that is its business)
_PLAIN_OPTS = st.one_of(
    st.sampled_from(["strip=/x", "prepend=/y", "tlsskipverify=true", "host=dst", "timeout=2s", "timeout=xx",
                     "blimp", "allow=ip:10.0.0.0/8", "k=v=w", "=", "=v", "register=alias"]),
    st.text(alphabet=string.ascii_letters + string.digits + "=/:.,-_", min_size=1, max_size=10).filter(
        lambda w: w.partition("=")[0] not in ("proto", "weight", "redirect")),
)
_SPECIAL_OPTS = st.sampled_from(["weight=0.3", "weight=0", "weight=1e3", "weight=.5", "proto=https", "proto=http",
                                 "proto=tcp", "proto=grpc", "proto=grpcs", "redirect=301,https://a/$path",
                                 "redirect=302,/x", "redirect=308,http://b/?q=1,2"])
_BAD_OPTS = st.sampled_from([
    ("weight=abc", "weight="), ("weight=-1", "weight="), ("weight=inf", "weight="), ("weight=nan", "weight="),
    ("weight=", "weight="), ("weight=1e999", "weight="), ("redirect=301", "redirect="),
    ("redirect=abc,x", "redirect="), ("redirect=,x", "redirect="), ("redirect=301,", "redirect="),
    ("proto=gopher", "unknown proto"), ("proto=", "unknown proto"), ("proto=HTTPS", "unknown proto"),
    ('x="q"', "quote"), ("k='v'", "quote"),
])
_BAD_ROUTES = st.sampled_from([
    ('/a"b', "quotes or control"), ("/a'b", "quotes or control"), ("/a\x01b", "quotes or control"),
    ("/a\tb", "quotes or control"), ("a\x7f.com/", "quotes or control"), ("/\x00", "quotes or control"),
    ("$DC", "add a slash"), ("${DC}.example.com", "add a slash"), ("a$DC", "add a slash"),
    (":$PORT", "add a slash"),
])


_VALID_ROUTE = _valid_route()
_WORDS = st.lists(st.one_of(_PLAIN_OPTS, _SPECIAL_OPTS), max_size=4)
_FEW_WORDS = st.lists(st.one_of(_PLAIN_OPTS, _SPECIAL_OPTS), max_size=2)
_FEW_PLAIN = st.lists(_PLAIN_OPTS, max_size=2)
_SPACING = st.sampled_from([(lead, trail, gap) for lead in ("", " ", "\t ", "  ") for trail in ("", " ", " \t")
                             for gap in ("", " ", "  ")])  # one draw: draws are what costs here
_TAG_KIND = st.sampled_from(["cmd", "cmd", "cmd", "badopt", "badroute", "empty", "other", "junk"])
_OTHER = st.sampled_from(["v1", "green", "other-/x", "urlprefix", "URLPREFIX-/x", "", " ", "a=b", " urlprefix/x "])
_JUNK = st.builds(lambda p, t: p + t, st.sampled_from([PREFIX, PREFIX + " ", "other-", ""]),
                  st.text(alphabet=string.printable, max_size=30))


def _expected_cmd(src: str, words: list[str]) -> tuple:
    """What fabio's rules make of valid option words: the last proto/weight/redirect wins."""
    scheme, path, weight, redirect, opts = "http://", "/", 0.0, "", []
    for w in words:
        key, eq, value = w.partition("=")
        if key == "proto":
            scheme, path = value + "://", "/" if value == "http" else ""
        elif key == "weight":
            weight = float(value)
        elif key == "redirect":
            code, _, redirect = value.partition(",")
            opts.append(("redirect", code))
        else:
            opts.append((key, value if eq else ""))
    return ("cmd", src, redirect or f"{scheme}{ADDR}{path}", weight, tuple(opts))


def _spaced(draw, prefix: str, route: str, words: list[str]) -> str:  # type: ignore[no-untyped-def]
    """Surrounding whitespace (fabio trims tags), spaces after the prefix, single spaces between words."""
    lead, trail, gap = draw(_SPACING)
    return lead + prefix + gap + route + "".join(" " + w for w in words) + trail


@st.composite
def oracle_tags(draw) -> tuple[str, tuple]:  # type: ignore[no-untyped-def]
    kind = draw(_TAG_KIND)
    if kind == "cmd":
        route, src = draw(_VALID_ROUTE)
        words = draw(_WORDS)
        return _spaced(draw, PREFIX, route, words), _expected_cmd(src, words)
    if kind == "badopt":  # one bad option among good ones: that one is the reason
        route, _ = draw(_VALID_ROUTE)
        before, (bad, reason), after = draw(_FEW_WORDS), draw(_BAD_OPTS), draw(_FEW_WORDS)
        return _spaced(draw, PREFIX, route, [*before, bad, *after]), ("err", reason)
    if kind == "badroute":
        route, reason = draw(_BAD_ROUTES)
        return _spaced(draw, PREFIX, route, draw(_FEW_PLAIN)), ("err", reason)
    if kind == "empty":
        return _spaced(draw, PREFIX, "", []), ("err", "empty route")
    if kind == "other":
        return draw(_OTHER), ("other",)
    return draw(_JUNK), ("junk",)


@settings(max_examples=examples(1_000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(oracle_tags(), max_size=6))  # plus the 3 GOOD_TAGS
def test_random_tags_each_become_their_command_or_their_error(drawn: list[tuple[str, tuple]]) -> None:
    raw = (*GOOD_TAGS, *(t for t, _ in drawn))
    expect = [_expected_cmd(src, words) for src, words in
              (("/good", []), ("example.com/api", ["strip=/api"]), ("/w", ["weight=0.5"]))]
    expect += [e for _, e in drawn]
    inst = Instance("svc", "svc-1", "n1", "10.0.0.1", 8080, raw)
    cmds, errors = route_cmds(inst, env={"DC": "dc1"})

    stripped = [t.strip() for t in raw]
    other_tags = tuple(t for t in stripped if t and not t.startswith(PREFIX))
    ci = ei = 0
    for tag, exp in zip(stripped, expect, strict=True):
        if exp[0] == "other" or (exp[0] == "junk" and not tag.startswith(PREFIX)):
            continue
        if exp[0] == "junk":  # same text, same outcome: if the next error names this text, it is this tag's
            if ei < len(errors) and errors[ei].tag == tag:
                assert errors[ei].reason
                ei += 1
            else:
                assert ci < len(cmds), f"{tag!r} gave neither a command nor an error"
                ci += 1
        elif exp[0] == "err":
            assert ei < len(errors), f"bad tag {tag!r} was accepted"
            e = errors[ei]
            ei += 1
            assert e.tag == tag and exp[1] in e.reason, (tag, exp, e)
            assert (e.service, e.instance) == ("svc", "svc-1") and repr(tag) in str(e)
        else:
            assert ci < len(cmds), f"valid tag {tag!r} gave no command: {errors}"
            c = cmds[ci]
            ci += 1
            assert (c.op, c.service, c.src, c.dst, c.weight, c.opts) == ("add", "svc", *exp[1:]), (tag, c)
            assert c.tags == other_tags
    assert ci == len(cmds) and ei == len(errors), (cmds[ci:], errors[ei:])

    # and the table accepts what the registry produced; its own rejections are reported, not raised
    table, table_errors = TableBuilder().update({"svc": cmds})
    for path, host in (("/good", ""), ("/api/x", "example.com"), ("/w", "")):
        assert table.lookup(host, path) is not None
    assert all(e.reason for e in table_errors)


# ----------------------------------------------------------------------------- overrides, with an oracle
#
# A line kind renders the text of line n and says what it does: either an effect that must be visible in
# the table, or "bad" (exactly this line number must be reported). Names carry n so lines don't interact.

MAX_LINES = 10
_GOOD_LINES = {
    "add": "route add s{n} /p{n}/ http://10.0.0.2:80/",
    "addhost": 'route add s{n} H{n}.Example.com/ http://10.0.0.3:80/ tags "t{n}"',
    "addweight": "route add s{n} /wa{n}/ http://10.0.0.4:80/ weight 0.25",
    "addlong": "route add s{n} /{long}{n}/ http://10.0.0.5:80/",
    "del": "route del victim{n}",
    "delsrc": "route del victim{n} /victim{n}/",
    "weight": "route weight wt{n} /wt{n}/ weight 0.5",
    "deltags": 'route del tags "no-such-tag-{n}"',
    "comment": "# comment {n}",
    "slashes": "// route del svc",
    "blank": "",
    "spaces": "  \t ",
}
_BAD_LINES = [
    "rout add x /x http://a/", "route add x", "route", "route add x /x http://a/ weight abc", "route del",
    "route weight svc /good/ weight nan", 'route del tags ""', "route add x /x http://a/ tags a,b",
    'route add x /x http://a/ opts "k=v', "route move svc",
    # refused by the table, not the parser: still this line's error
    "route add bad{n} /b{n}/ not-a-url", 'route add bad{n} /b{n}/ http://10.0.0.3/ opts "strip=nope"',
    "route weight nosuch{n} /nowt{n}/ weight 0.5",
    'route add bad{n} /b{n}/ http://10.0.0.3/ opts "allow=ip:10.0.0.0/8 deny=ip:10.1.0.0/16"',
]
_NOT_A_LINE_BREAK = "".join(c for c in string.printable if not ("a" + c + "b").splitlines()[1:])
_garbage = st.text(alphabet=_NOT_A_LINE_BREAK, min_size=1, max_size=40).filter(
    lambda t: bool(t.strip()) and not t.strip().startswith(("#", "//", "route")))
override_lines = st.one_of(
    st.sampled_from(sorted(_GOOD_LINES)).map(lambda k: ("good", k)),
    st.sampled_from(_BAD_LINES).map(lambda t: ("bad", t)),
    _garbage.map(lambda t: ("bad", t)),
)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(override_lines, max_size=MAX_LINES))
def test_override_text_reports_exactly_the_bad_lines_and_applies_the_rest(lines: list[tuple[str, str]]) -> None:
    text_lines, bad_lines = [], []
    for n, (kind, what) in enumerate(lines, 1):
        if kind == "good":
            text_lines.append(_GOOD_LINES[what].format(n=n, long="a" * 3000))
        else:
            text_lines.append(what.format(n=n) if "{n}" in what else what)
            bad_lines.append(n)
    text = "\n".join(text_lines)
    manual, parse_errors = parse(text, source="kv:fabio/config")
    base = ["route add svc /good/ http://10.0.0.1:80/"]
    base += [f"route add victim{n} /victim{n}/ http://10.0.0.6:80/" for n in range(1, MAX_LINES + 1)]
    base += [f"route add wt{n} /wt{n}/ http://10.0.0.7:80/" for n in range(1, MAX_LINES + 1)]
    service, service_errors = parse("\n".join(base), source="service:svc")
    assert service_errors == []
    table, table_errors = TableBuilder().update({"svc": service}, manual)

    errors = [*parse_errors, *table_errors]
    assert sorted(e.line for e in errors) == bad_lines, [str(e) for e in errors]
    assert all(e.source == "kv:fabio/config" and e.reason for e in errors)

    def targets(host: str, path: str) -> list:  # type: ignore[type-arg]
        route = table.lookup(host, path)
        return list(route.targets) if route is not None and route.path == path else []

    deleted = set()
    for n, (kind, what) in enumerate(lines, 1):
        if kind != "good":
            continue
        if what in ("add", "addhost", "addweight", "addlong"):
            host, path = {"add": ("", f"/p{n}/"), "addhost": (f"h{n}.example.com", "/"),
                          "addweight": ("", f"/wa{n}/"), "addlong": ("", f"/{'a' * 3000}{n}/")}[what]
            [t] = [t for t in targets(host, path) if t.service == f"s{n}"]
            assert t.tags == ((f"t{n}",) if what == "addhost" else ())
            assert t.fixed_weight == (0.25 if what == "addweight" else 0.0)
        elif what in ("del", "delsrc"):
            deleted.add(n)
        elif what == "weight":
            assert [t.fixed_weight for t in targets("", f"/wt{n}/")] == [0.5]
    for n in range(1, MAX_LINES + 1):  # a victim is gone exactly when a good line deleted it
        assert bool(targets("", f"/victim{n}/")) == (n not in deleted), n
    assert [t.service for t in targets("", "/good/")] == ["svc"]  # no good line deletes svc


def _bad_values(key) -> list[str]:  # type: ignore[no-untyped-def]
    """Values the key's parser must refuse (empty means the key accepts any text)."""
    candidates = ["not-a-value", "-5", "1e999x", "bogus!!"]
    bad = []
    for v in candidates:
        try:
            key.parse(v)
        except ValueError:
            bad.append(v)
    return bad


@pytest.mark.parametrize("key", [k for k in KEYS if _bad_values(k) and not k.lenient], ids=lambda k: k.name)
def test_every_invalid_config_value_stops_startup_naming_the_key(key) -> None:  # type: ignore[no-untyped-def]
    value = _bad_values(key)[0]
    with pytest.raises(ConfigError) as e:
        load([f"-{key.name}", value], env={})
    msg = str(e.value)
    assert key.name in msg and "expected" in msg
    assert (repr(value) in msg) or key.secret


@pytest.mark.parametrize("key", [k for k in KEYS if k.lenient], ids=lambda k: k.name)
def test_lenient_keys_warn_and_keep_the_default(key) -> None:  # type: ignore[no-untyped-def]
    value = _bad_values(key)[0]
    cfg = load([f"-{key.name}", value], env={})
    assert cfg[key.name] == key.parse(key.default)
    assert any(key.name in w and repr(value) in w and "expected" in w for w in cfg.warnings)
