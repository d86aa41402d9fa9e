"""fabio's route/target_test.go, row by row: the redirect Location built from a target URL and a request
(TestTarget_BuildRedirectURL). Pure rows, through the functions the proxy uses for `redirect=` routes:
the path after strip/prepend in the client's encoding (router/proxy/paths.py), then router/proxy/redirect.py.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from router.proxy import redirect
from router.proxy.paths import normalise_path, redirect_path, upstream_raw_path
from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fabio.rows import Outcome, differs, row, table

FILE = "route/target_test.go"

GROUPS = [  # (comment, route, [(request, Location)])
    ("simple absolute redirect", "route add svc / http://bar.com/", [
        ("/", "http://bar.com/"), ("/abc", "http://bar.com/"), ("/a/b/c", "http://bar.com/"),
        ("/?aaa=1", "http://bar.com/")]),
    ("simple absolute redirect with encoded character", "route add svc / http://bar.com/%2f/", [
        ("/", "http://bar.com/%2f/"), ("/abc", "http://bar.com/%2f/"), ("/a/b/c", "http://bar.com/%2f/"),
        ("/?aaa=1", "http://bar.com/%2f/")]),
    ("absolute redirect to deep path with query", "route add svc / http://bar.com/a/b/c?foo=bar", [
        ("/", "http://bar.com/a/b/c?foo=bar"), ("/abc", "http://bar.com/a/b/c?foo=bar"),
        ("/a/b/c", "http://bar.com/a/b/c?foo=bar"), ("/?aaa=1", "http://bar.com/a/b/c?foo=bar")]),
    ("simple redirect to corresponding path", "route add svc / http://bar.com/$path", [
        ("/", "http://bar.com/"), ("/abc", "http://bar.com/abc"), ("/a/b/c", "http://bar.com/a/b/c"),
        ("/?aaa=1", "http://bar.com/?aaa=1"), ("/abc/?aaa=1", "http://bar.com/abc/?aaa=1")]),
    ("same as above but without / before $path", "route add svc / http://bar.com$path", [
        ("/", "http://bar.com/"), ("/abc", "http://bar.com/abc"), ("/a/b/c", "http://bar.com/a/b/c"),
        ("/?aaa=1", "http://bar.com/?aaa=1"), ("/abc/?aaa=1", "http://bar.com/abc/?aaa=1")]),
    ("arbitrary subdir on target with $path at end", "route add svc / http://bar.com/bbb/$path", [
        ("/", "http://bar.com/bbb/"), ("/abc", "http://bar.com/bbb/abc"), ("/a/b/c", "http://bar.com/bbb/a/b/c"),
        ("/?aaa=1", "http://bar.com/bbb/?aaa=1"), ("/abc/?aaa=1", "http://bar.com/bbb/abc/?aaa=1")]),
    ("same as above but without / before $path", "route add svc / http://bar.com/bbb$path", [
        ("/", "http://bar.com/bbb/"), ("/abc", "http://bar.com/bbb/abc"), ("/a/b/c", "http://bar.com/bbb/a/b/c"),
        ("/?aaa=1", "http://bar.com/bbb/?aaa=1"), ("/abc/?aaa=1", "http://bar.com/bbb/abc/?aaa=1")]),
    ("subdir with encoded char on target with $path at end", "route add svc / http://bar.com/b%2fb/$path", [
        ("/", "http://bar.com/b%2fb/"), ("/abc", "http://bar.com/b%2fb/abc"),
        ("/a/b/c", "http://bar.com/b%2fb/a/b/c"), ("/?aaa=1", "http://bar.com/b%2fb/?aaa=1"),
        ("/abc/?aaa=1", "http://bar.com/b%2fb/abc/?aaa=1")]),
    ("simple redirect to corresponding path with encoded char in path", "route add svc / http://bar.com/$path", [
        ("/%20", "http://bar.com/%20"), ("/a%2fbc", "http://bar.com/a%2fbc"), ("/a/b%22/c", "http://bar.com/a/b%22/c"),
        ("/%2f/?aaa=1", "http://bar.com/%2f/?aaa=1")]),
    ("subdir + path with encoded char on target and encoded char in path",
     "route add svc / http://monkey.com/b%2fb/$path", [("/%22", "http://monkey.com/b%2fb/%22")]),
    ("strip prefix", 'route add svc /stripme http://bar.com/$path opts "strip=/stripme"', [
        ("/stripme/", "http://bar.com/"), ("/stripme/abc", "http://bar.com/abc"),
        ("/stripme/a/b/c", "http://bar.com/a/b/c"), ("/stripme/?aaa=1", "http://bar.com/?aaa=1"),
        ("/stripme/abc/?aaa=1", "http://bar.com/abc/?aaa=1")]),
    ("strip prefix containing encoded char", 'route add svc /strip%2fme http://bar.com/$path opts "strip=/strip%2fme"', [
        ("/strip%2fme/abc", "http://bar.com/abc"), ("/strip%2fme/ab%22c", "http://bar.com/ab%22c"),
        ("/strip%2fme/ab%2fc", "http://bar.com/ab%2fc")]),
]

# strip= is a decoded path here (it is compared with the decoded request path, as the route is), so the
# literal `strip=/strip%2fme` never matches `/strip%2fme/...` (decoded: `/strip/me/...`): nothing is cut.
ENCODED_STRIP = differs("Upstream path encoding with `strip=`/`prepend=`")
OURS = {"/strip%2fme/abc": "http://bar.com/strip%2fme/abc", "/strip%2fme/ab%22c": "http://bar.com/strip%2fme/ab%22c",
        "/strip%2fme/ab%2fc": "http://bar.com/strip%2fme/ab%2fc",
        # `/%2f/` decodes to `///`, which is routed as `/`: the decoded result is what is sent then
        "/%2f/?aaa=1": "http://bar.com/?aaa=1"}

ROWS = []
for comment, route, cases in GROUPS:
    for req, want in cases:
        outcome = differs(ENCODED_STRIP.note, OURS[req]) if req in OURS else None
        ROWS.append(row(f"{comment}: {route.split(' ', 4)[4]} {req}", route, req, want,
                        **({"outcome": outcome} if outcome else {})))


@pytest.mark.parametrize(("route", "req", "want", "outcome"), table(FILE, "TestTarget_BuildRedirectURL", ROWS))
def test_build_redirect_url(route: str, req: str, want: str, outcome: Outcome) -> None:
    cmds, errors = parse(route)
    assert errors == []
    tbl, errors = TableBuilder().update(manual=cmds)
    assert errors == []
    target = next(iter(tbl.iter_targets()))
    raw, _, query = req.partition("?")
    scope = {"path": unquote(raw), "raw_path": raw.encode(), "query_string": query.encode(), "headers": []}
    path = normalise_path(scope["path"])
    up = redirect_path(target, path, upstream_raw_path(target, path, scope))
    assert redirect.location(target.url, up, "foo.com", query.encode()) == outcome.want(want)
