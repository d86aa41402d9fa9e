"""Policy options through the table: from tags and override lines, errors reported, header-match precedence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.consul.health import Instance
from registry.tags import route_cmds
from router.table.builder import TableBuilder
from router.table.routecmd import parse


def build(manual: str = "", **services: list[str]):  # type: ignore[no-untyped-def]
    """A table from override text and, per service, urlprefix- tags of one instance each."""
    svc_cmds = {}
    for name, tags in services.items():
        cmds, errs = route_cmds(Instance(name, f"{name}-1", "n1", "10.0.0.1", 8080, tuple(tags)))
        assert not errs
        svc_cmds[name] = cmds
    cmds, perrs = parse(manual, source="kv:fabio/config")
    assert not perrs
    return TableBuilder().update(svc_cmds, cmds)


def test_policy_from_a_tag_and_from_an_override_line_is_the_same() -> None:
    t1, e1 = build(a=["urlprefix-/x compress=gzip resphdr.del=Server ratelimit=10/s"])
    t2, e2 = build('route add a /x http://10.0.0.1:8080/ opts "compress=gzip resphdr.del=Server ratelimit=10/s"')
    assert not e1 and not e2
    r1, r2 = t1.lookup("h", "/x"), t2.lookup("h", "/x")
    assert r1 is not None and r2 is not None
    assert r1.targets[0].policy == r2.targets[0].policy
    assert r1.targets[0].policy.compress == ("gzip",)
    assert r1.policy is not None and r1.policy.ratelimit.rate == 10.0


def test_route_without_policy_options_has_no_policy() -> None:
    t, _ = build(a=["urlprefix-/x strip=/x"])
    r = t.lookup("h", "/x")
    assert r is not None and r.policy is None and r.targets[0].policy is None


@pytest.mark.parametrize(("opts", "named"), [
    ("compress=deflate", "compress="), ("ratelimit=fast", "ratelimit="), ("sticky=ip", "sticky="),
    ("match=X-A~(", "match="), ("reqhdr.set=X-Forwarded-For:1", "reqhdr.set"), ("resphdr.add=bad", "resphdr.add"),
])
def test_bad_value_refuses_that_command_only(opts: str, named: str) -> None:
    manual = (f'route add a /bad http://10.0.0.1:8080/ opts "{opts}"\n'
              'route add a /good http://10.0.0.1:8080/ opts "compress=on"')
    t, errors = build(manual)
    assert len(errors) == 1
    e = errors[0]
    assert e.source == "kv:fabio/config" and e.line == 1 and named in e.reason and "invalid option" in e.reason
    assert t.lookup("h", "/bad") is None and t.lookup("h", "/good") is not None


def test_bad_tag_value_reported_with_its_service() -> None:
    cmds, _ = route_cmds(Instance("api", "api-1", "n1", "10.0.0.1", 8080,
                                  ("urlprefix-/a ratelimit=0/s", "urlprefix-/b")))
    t, errors = TableBuilder().update({"api": cmds})
    assert len(errors) == 1 and errors[0].source == "service:api/api-1" and "ratelimit=" in errors[0].reason
    assert t.lookup("h", "/a") is None and t.lookup("h", "/b") is not None


def _variants(t, path="/api"):  # type: ignore[no-untyped-def]
    r = t.lookup("example.com", path)
    assert r is not None and r.policy is not None
    return r, [(m.text, [x.service for x in v.targets]) for m, v in r.policy.variants]


def test_header_variants_ordered_most_specific_first() -> None:
    t, errors = build(
        v1=["urlprefix-example.com/api"],
        v2=["urlprefix-example.com/api match=X-Version=2"],
        v2json=["urlprefix-example.com/api match=X-Version=2&Accept~json"],
        anyv=["urlprefix-example.com/api match=X-Version"],
        rx=["urlprefix-example.com/api match=X-Version~^3"],
    )
    assert not errors
    r, vs = _variants(t)
    assert vs == [("X-Version=2&Accept~json", ["v2json"]), ("X-Version=2", ["v2"]), ("X-Version~^3", ["rx"]),
                  ("X-Version", ["anyv"])]
    assert [x.service for x in r.policy.default] == ["v1"]
    assert r.pick() is not None and r.pick().service == "v1"  # the route's own pool is the default one
    rows = {row["service"]: row for row in t.routes()}
    assert rows["v2json"]["policies"]["precedence"] == 1 and rows["anyv"]["policies"]["precedence"] == 4
    assert "policies" not in rows["v1"]
    assert rows["v2"]["policies"]["match"] == "X-Version=2"


def test_variant_pools_keep_their_weights_and_limits() -> None:
    manual = "\n".join([
        'route add v2 /api http://10.0.0.2:80/ opts "match=X-Version=2 ratelimit=5/s"',
        'route add v2 /api http://10.0.0.3:80/ opts "match=X-Version=2 ratelimit=5/s"',
        'route add v1 /api http://10.0.0.1:80/',
    ])
    t, errors = build(manual)
    assert not errors
    r = t.lookup("h", "/api")
    (m, v2), = r.policy.variants
    assert len(v2.targets) == 2 and v2.policy.ratelimit.rate == 5.0 and r.policy.ratelimit is None
    picked = {v2.pick("rr").url for _ in range(4)}
    assert picked == {"http://10.0.0.2:80/", "http://10.0.0.3:80/"}


def test_render_and_api_rows_keep_the_option_text() -> None:
    t, _ = build('route add a /x http://10.0.0.1:8080/ opts "sticky=cookie,name=S,maxage=1h resphdr.del=Server"')
    assert t.render() == ('route add a /x http://10.0.0.1:8080/ opts "resphdr.del=Server '
                          'sticky=cookie,name=S,maxage=1h"\n')
    (row,) = t.routes()
    assert row["policies"] == {"resphdr": {"del": ["server"], "set": {}, "add": []},
                               "sticky": {"mode": "cookie", "cookie": "S"}}


def test_default_pool_is_its_own_route_so_retries_stay_in_it() -> None:
    manual = "\n".join([
        'route add v2 /api http://10.0.0.2:80/ opts "match=X-Version=2 ratelimit=5/s"',
        'route add v1 /api http://10.0.0.1:80/ opts "ratelimit=5/s"',
        'route add v1 /api http://10.0.0.3:80/ opts "ratelimit=5/s"',
    ])
    t, _ = build(manual)
    r = t.lookup("h", "/api")
    d = r.policy.default_route
    assert [x.url for x in d.targets] == ["http://10.0.0.1:80/", "http://10.0.0.3:80/"]
    (_, v2), = r.policy.variants
    # the same option on two pools: two buckets (the pool names its match)
    assert d.policy.pool == "" and v2.policy.pool == "X-Version=2"


_VALID = {
    "compress": ["on", "off", "gzip", "zstd,br"],
    "reqhdr.set": ["X-A:1", "X-B:a%20b|X-C:"],
    "resphdr.del": ["Server", "Server,X-Powered-By"],
    "match": ["X-V", "X-V=2", "Accept~json&X-V=3"],
    "ratelimit": ["10/s", "5/m,burst=2,per=client"],
    "sticky": ["cookie", "cookie,name=S,maxage=1h,secure", "hash,header=X-User"],
    "maxbody": ["0", "10MB"],
}


@given(st.dictionaries(st.sampled_from(sorted(_VALID)), st.integers(0, 3), min_size=1))
def test_policies_survive_render_and_reparse(choice: dict[str, int]) -> None:
    """/api/routes?raw (fabio's text form) read back as overrides gives the same policies."""
    opts = " ".join(f"{k}={_VALID[k][i % len(_VALID[k])]}" for k, i in sorted(choice.items()))
    t1, e1 = build(f'route add a /x http://10.0.0.1:8080/ opts "{opts}"')
    assert not e1
    t2, e2 = build(t1.render())
    assert not e2
    (a,), (b,) = t1.routes(), t2.routes()
    assert a == b and set(a["policies"]) >= {k.split(".")[0] for k in choice}


def test_operators_csp_example_works_as_a_tag() -> None:
    """The cookbook's tag (quotes percent-encoded: a tag may not hold quotes) gives the intended headers."""
    tag = ("urlprefix-shop.example.com/ resphdr.del=Server,X-Powered-By "
           "resphdr.set=Content-Security-Policy:default-src%20%27self%27|X-Frame-Options:DENY")
    t, errors = build(shop=[tag])
    assert not errors
    edit = t.lookup("shop.example.com", "/").targets[0].policy.resp
    assert edit.remove == {"server", "x-powered-by"}
    assert edit.set == (("content-security-policy", "default-src 'self'"), ("x-frame-options", "DENY"))


def test_every_cookbook_tag_is_accepted() -> None:
    """Each urlprefix- tag of the traffic-policy cookbook (docs/operators.md) and of README's tag table builds
    a route without errors."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operators.md").read_text()
    section = doc[doc.index("### Traffic policies"):doc.index("## UI tour")]
    tags = [m.group(1).strip() for m in re.finditer(r"(urlprefix-[^\n#`]*)", section)]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    tags += re.findall(r"^\| `(urlprefix-[^`]*)`", readme, re.M)  # README's tag table
    assert len(tags) >= 20
    for tag in tags:
        cmds, errs = route_cmds(Instance("svc", "svc-1", "n1", "10.0.0.1", 8080, (tag,)))
        assert not errs, tag
        _, errors = TableBuilder().update({"svc": cmds})
        assert not errors, (tag, errors)
