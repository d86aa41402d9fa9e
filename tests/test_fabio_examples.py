"""fabio's documented examples, as tables: tags (reference §2.7), route commands (§2.1), lookup order
(§2.3), weights (§2.5), redirect URLs (§2.7, fabio's BuildRedirectURL cases) and forwarding headers (§3,
through the real proxy)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote

import httpx
import pytest

from registry.consul.health import Instance
from registry.tags import route_cmds
from router.proxy import redirect
from router.proxy.paths import normalise_path, upstream_raw_path
from router.table.builder import TableBuilder
from router.table.routecmd import RouteCmd, parse
from router.table.routes import Table
from tests.backends import Backend
from tests.router_proc import RouterProc

TAGS = [
    ("urlprefix-/foo/bar strip=/foo", 'route add svc-1 /foo/bar http://1.1.1.1:2222/ opts "strip=/foo"'),
    ("urlprefix-/bar prepend=/foo", 'route add svc-1 /bar http://1.1.1.1:2222/ opts "prepend=/foo"'),
    ("urlprefix-/bar prepend=/baz strip=/foo",
     'route add svc-1 /bar http://1.1.1.1:2222/ opts "prepend=/baz strip=/foo"'),
    ("urlprefix-/foo proto=https", "route add svc-1 /foo https://1.1.1.1:2222"),
    ("urlprefix-/foo proto=https tlsskipverify=true",
     'route add svc-1 /foo https://1.1.1.1:2222 opts "tlsskipverify=true"'),
    ("urlprefix-:3306 proto=tcp", "route add svc-1 :3306 tcp://1.1.1.1:2222"),
    ("urlprefix-:3306 proto=tcp pxyproto=true", 'route add svc-1 :3306 tcp://1.1.1.1:2222 opts "pxyproto=true"'),
    ("urlprefix-/path redirect=301,https://www.google.com/",
     'route add svc-1 /path https://www.google.com/ opts "redirect=301"'),
    ("urlprefix-/path redirect=303,https://www.foo.com$path",
     'route add svc-1 /path https://www.foo.com$path opts "redirect=303"'),
    ("urlprefix-/ proto=https auth=team", 'route add svc-1 / https://1.1.1.1:2222 opts "auth=team"'),
    ("urlprefix-/a allow=ip:10.0.0.0/8,ip:fe80::/10",
     'route add svc-1 /a http://1.1.1.1:2222/ opts "allow=ip:10.0.0.0/8,ip:fe80::/10"'),
    ("urlprefix-foo/bar", "route add svc-1 foo/bar http://1.1.1.1:2222/"),
    ("urlprefix-foo.com", "route add svc-1 foo.com http://1.1.1.1:2222/"),
    ("urlprefix-Foo.COM/Bar", "route add svc-1 foo.com/Bar http://1.1.1.1:2222/"),
    ("urlprefix-$DC.example.com/", "route add svc-1 dc1.example.com/ http://1.1.1.1:2222/"),
    ("urlprefix-p-$x/$y", "route add svc-1 p-/ http://1.1.1.1:2222/"),
    ("urlprefix-/w weight=0.2", "route add svc-1 /w http://1.1.1.1:2222/ weight 0.2"),
]


@pytest.mark.parametrize(("tag", "line"), TAGS)
def test_tag_examples(tag: str, line: str) -> None:
    cmds, errors = route_cmds(Instance("svc-1", "id", "n", "1.1.1.1", 2222, (tag,)), env={"DC": "dc1"})
    assert errors == [] and [str(c) for c in cmds] == [line]


def test_other_tags_become_route_tags() -> None:
    cmds, _ = route_cmds(Instance("svc-1", "id", "n", "1.1.1.1", 2222, ("urlprefix-/a", "green", " v1 ")))
    assert cmds[0].tags == ("green", "v1")


COMMANDS = [
    "route add svc /path http://1.2.3.4:5000/",
    "route add svc /path http://1.2.3.4:5000/ weight 0.2",
    'route add svc /path http://1.2.3.4:5000/ weight 0.2 tags "a,b" opts "strip=/path blimp"',
    "  route   add  svc   /path   http://1.2.3.4:5000/  ",
    "route del svc",
    "route del svc /path",
    "route del svc /path http://1.2.3.4:5000/",
    'route del svc tags "a,b"',
    'route del tags "a,b"',
    'route weight product-svc /path weight .05 tags "green"',
    'route weight /path weight .05 tags "lang=go"',
    'route weight service-b www.kjca.dev/auth/ weight 0.05 tags "version-15,dc-fra"',
    'route weight vault vault.company.com weight 1.00 tags "active"',
]


@pytest.mark.parametrize("line", COMMANDS)
def test_route_command_examples_parse(line: str) -> None:
    cmds, errors = parse(line)
    assert errors == [] and len(cmds) == 1


@pytest.mark.parametrize("text", ["# a comment", "// another", "", "   "])
def test_comments_and_blank_lines(text: str) -> None:
    assert parse(text) == ([], [])


@pytest.mark.parametrize("line", ["route add svc /p", "route nope svc", "route add svc /p http://x/ weight abc",
                                  "route weight /p weight 0.5"])
def test_bad_commands_are_reported(line: str) -> None:
    cmds, errors = parse(line)
    assert cmds == [] and len(errors) == 1


def table(text: str, manual: str = "", **kw: object) -> Table:
    cmds, errors = parse(text)
    mcmds, merrors = parse(manual)
    assert errors == [] and merrors == []
    by: dict[str, list[RouteCmd]] = {}
    for c in cmds:
        by.setdefault(c.service, []).append(c)
    t, errs = TableBuilder(**kw).update(services=by, manual=mcmds)  # type: ignore[arg-type]
    assert errs == []
    return t


LOOKUP_TABLE = """
route add a xyz.com:80/ http://a:1/
route add b abc.com:443/ http://b:1/
route add c *.abc.com/ http://c:1/
route add d *.aaa.abc.com/ http://d:1/
route add e z.abc.com/ http://e:1/
route add f /foo http://f:1/
route add g / http://g:1/
"""


@pytest.mark.parametrize(("host", "path", "tls", "service"), [
    ("xyz.com", "/", False, "a"),          # :80 stripped from the pattern on plain HTTP
    ("XYZ.com:80", "/", False, "a"),       # and from the request host; hosts are case-insensitive
    ("abc.com", "/", False, "g"),          # abc.com:443 does not match over plain HTTP
    ("abc.com", "/", True, "b"),           # ...but does over TLS
    ("x.aaa.abc.com", "/", False, "d"),    # longer wildcard first
    ("x.bbb.abc.com", "/", False, "c"),
    ("z.abc.com", "/", False, "e"),        # exact before wildcard
    ("x.aaa.abc.com", "/foo", False, "d"),  # the host decides before the path
    ("other.com", "/foo/bar", False, "f"),  # no-host fallback, longest prefix
])
def test_lookup_examples(host: str, path: str, tls: bool, service: str) -> None:
    r = table(LOOKUP_TABLE).lookup(host, path, tls=tls)
    assert r is not None and r.targets[0].service == service


def test_glob_matching_disabled() -> None:
    t = table(LOOKUP_TABLE, glob_matching=False)
    assert t.lookup("x.aaa.abc.com", "/").targets[0].service == "g"  # type: ignore[union-attr]


@pytest.mark.parametrize(("matcher", "path", "hit"), [
    ("prefix", "/foo/x", True), ("prefix", "/FOO/x", False), ("iprefix", "/FOO/x", True),
    ("glob", "/foo", True), ("glob", "/fools", False),
])
def test_matchers(matcher: str, path: str, hit: bool) -> None:
    t = table("route add s /foo http://s:1/", matcher=matcher)
    assert (t.lookup("h", path) is not None) == hit


def shares(t: Table) -> list[tuple[str, str, float]]:
    return sorted((r["service"], r["dst"], round(r["weight"], 4)) for r in t.routes())


@pytest.mark.parametrize(("text", "manual", "expected"), [
    ("route add a / http://a:1/ weight 0.2\nroute add b / http://b:1/ weight 0.3",
     "", [("a", "http://a:1/", 0.4), ("b", "http://b:1/", 0.6)]),
    ("route add a / http://a:1/ weight 0.5\nroute add b / http://b:1/\nroute add c / http://c:1/",
     "", [("a", "http://a:1/", 0.5), ("b", "http://b:1/", 0.25), ("c", "http://c:1/", 0.25)]),
    ("route add svca / http://a:1/\nroute add svcb / http://b1:1/\nroute add svcb / http://b2:1/",
     "route weight svcb / weight 0.1",
     [("svca", "http://a:1/", 0.9), ("svcb", "http://b1:1/", 0.05), ("svcb", "http://b2:1/", 0.05)]),
])
def test_weight_examples(text: str, manual: str, expected: list) -> None:
    assert shares(table(text, manual)) == expected


def test_render_example() -> None:
    t = table("route add svc-a / http://aaa.com/\nroute add svc-b / http://bbb.com/ weight 0.5")
    assert "route add svc-b / http://bbb.com/ weight 0.5000" in t.render()


# ---- redirect URLs (§2.7): fabio's BuildRedirectURL cases, request Host "foo.com"

REQS = ["/", "/abc", "/a/b/c", "/?aaa=1", "/abc/?aaa=1"]
REDIRECTS = [
    # (target URL [opts], expected Location for each of REQS)
    ("http://bar.com/", ["http://bar.com/"] * 5),  # no $path: the request path and query are not used
    ("http://bar.com/a/b/c?foo=bar", ["http://bar.com/a/b/c?foo=bar"] * 5),
    ("https://$host/", ["https://foo.com/"] * 5),
    ("http://bar.com/$path",  # the "/" before $path is dropped: no "//abc"
     ["http://bar.com/", "http://bar.com/abc", "http://bar.com/a/b/c", "http://bar.com/?aaa=1",
      "http://bar.com/abc/?aaa=1"]),
    ("https://$host/$path",
     ["https://foo.com/", "https://foo.com/abc", "https://foo.com/a/b/c", "https://foo.com/?aaa=1",
      "https://foo.com/abc/?aaa=1"]),
    ("http://bar.com$path",  # $path glued to the host
     ["http://bar.com/", "http://bar.com/abc", "http://bar.com/a/b/c", "http://bar.com/?aaa=1",
      "http://bar.com/abc/?aaa=1"]),
    ("https://$host$path",
     ["https://foo.com/", "https://foo.com/abc", "https://foo.com/a/b/c", "https://foo.com/?aaa=1",
      "https://foo.com/abc/?aaa=1"]),
    ("http://bar.com/bbb/$path",
     ["http://bar.com/bbb/", "http://bar.com/bbb/abc", "http://bar.com/bbb/a/b/c", "http://bar.com/bbb/?aaa=1",
      "http://bar.com/bbb/abc/?aaa=1"]),
    ("https://$host/bbb/$path",
     ["https://foo.com/bbb/", "https://foo.com/bbb/abc", "https://foo.com/bbb/a/b/c", "https://foo.com/bbb/?aaa=1",
      "https://foo.com/bbb/abc/?aaa=1"]),
    ("http://bar.com/bbb$path",
     ["http://bar.com/bbb/", "http://bar.com/bbb/abc", "http://bar.com/bbb/a/b/c", "http://bar.com/bbb/?aaa=1",
      "http://bar.com/bbb/abc/?aaa=1"]),
    ("https://$host/bbb$path",
     ["https://foo.com/bbb/", "https://foo.com/bbb/abc", "https://foo.com/bbb/a/b/c", "https://foo.com/bbb/?aaa=1",
      "https://foo.com/bbb/abc/?aaa=1"]),
]
REDIRECT_CASES = [(dst, req, want) for dst, wants in REDIRECTS for req, want in zip(REQS, wants, strict=True)]
REDIRECT_CASES += [
    # the request path in the client's encoding
    ("http://bar.com/$path", "/%20", "http://bar.com/%20"),
    ("http://bar.com/$path", "/a%2fbc", "http://bar.com/a%2fbc"),
    ("http://bar.com/$path", "/a/b%22/c", "http://bar.com/a/b%22/c"),
    ("http://bar.com/$path", "/a%2fb/c%25d?aaa=1", "http://bar.com/a%2fb/c%25d?aaa=1"),
    # fabio's unit test has "/%2f/" -> "/%2f/" and "/%20/a%2f/" -> "/%20/a%2f/", calling BuildRedirectURL
    # directly; through a proxy the decoded path "///" / "/ /a//" is normalised first (empty segments
    # removed) and the raw path is cut the same way, so the Location is the normalised path:
    ("http://bar.com/$path", "/%2f/?aaa=1", "http://bar.com/?aaa=1"),
    ("http://bar.com/$path", "/%20/a%2f/", "http://bar.com/%20/a/"),
    # $path is the path after strip= (and prepend=)
    ('http://bar.com/$path opts "strip=/stripme"', "/stripme/", "http://bar.com/"),
    ('http://bar.com/$path opts "strip=/stripme"', "/stripme/abc", "http://bar.com/abc"),
    ('http://bar.com/$path opts "strip=/stripme"', "/stripme/a/b/c", "http://bar.com/a/b/c"),
    ('http://bar.com/$path opts "strip=/stripme"', "/stripme/?aaa=1", "http://bar.com/?aaa=1"),
    ('http://bar.com/$path opts "strip=/stripme"', "/stripme/abc/?aaa=1", "http://bar.com/abc/?aaa=1"),
    ('http://bar.com/$path opts "prepend=/p"', "/abc", "http://bar.com/p/abc"),
    # the URL's own query wins; only the first $path is replaced; fragment and user info are not sent
    ("http://bar.com/$path?x=1", "/abc?aaa=1", "http://bar.com/abc?x=1"),
    ("http://bar.com/$path/$path", "/abc", "http://bar.com/abc/$path"),
    ("http://u@bar.com/$path#frag", "/abc", "http://bar.com/abc"),
]


def redirect_location(dst: str, req: str, host: str = "foo.com") -> str:
    """The Location the proxy answers for request target `req` on a `route add svc / <dst>` redirect."""
    opts = dst.partition(" opts ")[2].strip('"')
    line = f'route add svc / {dst.partition(" opts ")[0]} opts "redirect=301 {opts}"'
    raw, _, query = req.partition("?")
    scope = {"raw_path": raw.encode(), "path": unquote(raw), "query_string": query.encode(), "headers": []}
    path = normalise_path(scope["path"])
    r = table("", line).lookup(host, path)
    assert r is not None
    t = r.targets[0]
    assert t.redirect_code == 301
    return redirect.location(t.redirect_url, upstream_raw_path(t, path, scope), host, query.encode())


@pytest.mark.parametrize(("dst", "req", "want"), REDIRECT_CASES)
def test_redirect_examples(dst: str, req: str, want: str) -> None:
    assert redirect_location(dst, req) == want


@pytest.mark.parametrize(("host", "want"), [
    ("foo.com:8080", "https://foo.com:8080/abc"),  # $host is the request's Host as sent, port included
    ("foo.com", "https://foo.com/abc"),
    ("[::1]:81", "https://[::1]:81/abc"),
])
def test_redirect_host_keeps_the_port(host: str, want: str) -> None:
    assert redirect_location("https://$host$path", "/abc", host) == want


# ---- headers (§3), through the real proxy


@pytest.fixture(scope="module")
def hdr() -> Iterator[tuple[RouterProc, Backend]]:
    b = Backend("hdr").start()
    with RouterProc("-registry.backend", "static", "-registry.static.routes",
                    f'route add s / http://127.0.0.1:{b.port}/\nroute add s /p http://127.0.0.1:{b.port}/ opts '
                    '"strip=/p"', "-proxy.localip", "5.6.7.8") as r:
        yield r, b
    b.stop()


@pytest.mark.parametrize(("sent", "expected"), [
    ({}, {"x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1", "x-forwarded-proto": "http",
          "x-forwarded-port": "80", "x-forwarded-host": "h.test", "user-agent": "",
          "forwarded": "for=127.0.0.1; proto=http; by=5.6.7.8; httpproto=http/1.1"}),
    ({"X-Forwarded-For": "3.3.3.3"}, {"x-forwarded-for": "3.3.3.3, 127.0.0.1"}),
    ({"X-Real-Ip": "9.9.9.9"}, {"x-real-ip": "9.9.9.9"}),
    ({"X-Forwarded-Proto": "https"}, {"x-forwarded-proto": "https"}),
    ({"Forwarded": "for=9.9.9.9; proto=http; by=8.8.8.8"},
     {"forwarded": "for=9.9.9.9; proto=http; by=8.8.8.8; by=5.6.7.8; httpproto=http/1.1"}),
    ({"Connection": "X-Forwarded-For, X-Real-Ip, Forwarded"}, {"x-forwarded-for": "127.0.0.1",
                                                               "x-real-ip": "127.0.0.1"}),
])
def test_header_examples(hdr: tuple[RouterProc, Backend], sent: dict, expected: dict) -> None:
    r, b = hdr
    headers = {"Host": "h.test", "User-Agent": "", **sent}
    if "User-Agent" in headers and not headers["User-Agent"]:
        del headers["User-Agent"]
    with httpx.Client(headers={}) as c:
        req = c.build_request("GET", r.url + "/x", headers=headers)
        req.headers.pop("user-agent", None)
        assert c.send(req).status_code == 200
    got = b.requests[-1].headers
    for k, v in expected.items():
        assert got.get(k) == v, (k, got)


def test_strip_sets_prefix_header(hdr: tuple[RouterProc, Backend]) -> None:
    r, b = hdr
    assert httpx.get(r.url + "/p/x").status_code == 200
    assert b.requests[-1].path == "/x" and b.requests[-1].headers["x-forwarded-prefix"] == "/p"
