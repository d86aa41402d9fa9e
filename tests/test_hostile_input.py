"""Hostile or broken input (issue: reliability): random tags, broken override text, invalid config.

Property-based: whatever the input, no exception escapes, valid routes stay routed, and every bad
item is reported on its own.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.health import Instance
from registry.tags import route_cmds
from router.config import KEYS, ConfigError, load
from router.routecmd import parse
from router.table import TableBuilder

GOOD_TAGS = ("urlprefix-/good", "urlprefix-example.com/api strip=/api", "urlprefix-/w weight=0.5")

option_words = st.one_of(
    st.sampled_from(["strip=/x", "prepend=/y", "weight=0.3", "weight=abc", "weight=-1", "weight=inf",
                     "redirect=301,https://a/$path", "redirect=301", "redirect=abc,", "proto=https",
                     "proto=gopher", "tlsskipverify=true", "host=dst", "timeout=2s", "timeout=xx", "blimp",
                     "allow=ip:10.0.0.0/8", 'x="q"', "k=v=w", "=", "=v"]),
    st.text(alphabet=string.printable, max_size=12),
)
random_tags = st.builds(
    lambda prefix, route, opts: (prefix + route + (" " + " ".join(opts) if opts else "")),
    st.sampled_from(["urlprefix-", "urlprefix- ", "urlprefix-  ", "other-", ""]),
    st.one_of(st.sampled_from(["", "/", "/a", "a.com", "a.com/b", ":3306", "$DC.x/", "//", "/a b"]),
              st.text(alphabet=string.printable, max_size=30)),
    st.lists(option_words, max_size=4),
)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(random_tags, max_size=4))
def test_random_tags_never_break_valid_routes(bad: list[str]) -> None:
    inst = Instance("svc", "svc-1", "n1", "10.0.0.1", 8080, (*GOOD_TAGS, *bad))
    cmds, errors = route_cmds(inst, env={"DC": "dc1"})
    srcs = [c.src for c in cmds]
    for good in ("/good", "example.com/api", "/w"):
        assert good in srcs
    # every route tag became exactly one command or exactly one error
    route_tags = [t for t in inst.tags if t.startswith("urlprefix-")]
    assert len(cmds) + len(errors) == len(route_tags)
    for e in errors:
        assert "svc-1" in str(e) and e.reason
    # and the table accepts what the registry produced; its own rejections are reported, not raised
    table, table_errors = TableBuilder().update({"svc": cmds})
    for path, host in (("/good", ""), ("/api/x", "example.com"), ("/w", "")):
        assert table.lookup(host, path) is not None
    assert all(e.reason for e in table_errors)


override_lines = st.one_of(
    st.sampled_from([
        "route add m /m http://10.0.0.2:80/",
        "route del svc",
        "route weight svc /good weight 0.5",
        "route weight nosuch /x weight 0.5",
        "route weight svc /good weight 1e308",
        "route weight svc /good weight nan",
        "route add x /x not-a-url",
        "route add x",
        "rout add x /x http://a/",
        'route add y /y http://10.0.0.3/ opts "strip=nope"',
        "route del tags \"a,b\"",
        "# comment",
        "",
        "route add big /" + "a" * 5000 + " http://10.0.0.4/",
    ]),
    st.text(alphabet=string.printable, max_size=60),
)


@settings(max_examples=2_000, deadline=None)
@given(st.lists(override_lines, max_size=8))
def test_broken_override_text_rejects_lines_on_their_own(lines: list[str]) -> None:
    text = "\n".join(lines)
    manual, parse_errors = parse(text, source="kv:fabio/config")
    builder = TableBuilder()
    service = [c for c in parse("route add svc /good http://10.0.0.1:80/", source="service:svc")[0]]
    table, errors = builder.update({"svc": service}, manual)
    for e in [*parse_errors, *errors]:
        assert 1 <= e.line <= max(1, len(text.splitlines()) or 1) or e.source.startswith("service:")
        assert e.reason
    # a line that parsed and deletes nothing of svc leaves svc routed
    if not any(c.op == "del" for c in manual):
        assert table.lookup("", "/good") is not None


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


@pytest.mark.parametrize("key", [k for k in KEYS if _bad_values(k)], ids=lambda k: k.name)
def test_every_invalid_config_value_stops_startup_naming_the_key(key) -> None:  # type: ignore[no-untyped-def]
    value = _bad_values(key)[0]
    with pytest.raises(ConfigError) as e:
        load([f"-{key.name}", value], env={})
    msg = str(e.value)
    assert key.name in msg and "expected" in msg
    assert (repr(value) in msg) or key.secret
