"""fabio's registry/consul/parse_test.go, row by row: reading a `urlprefix-` tag (TestParseTag), with the
tag prefix `p-`. Pure rows on registry/tags.py: a tag fabio does not accept gives no route command here."""

from __future__ import annotations

import pytest

from registry.consul.health import Instance
from registry.tags import route_cmds
from tests.fabio.rows import Outcome, row, table

FILE = "registry/consul/parse_test.go"
ENV = {"x": "Xx", "Y": "Yy"}

ROWS = [  # tag, env, route, opts, ok
    row("p", "p", None, "", "", False),
    row("p-", "p-", None, "", "", False),
    row("'p- '", "p- ", None, "", "", False),
    row("p-/", "p-/", None, "/", "", True),
    row("' p-/'", " p-/", None, "/", "", True),
    row("'p-/ '", "p-/ ", None, "/", "", True),
    row("'p- / '", "p- / ", None, "/", "", True),
    row("p-/foo", "p-/foo", None, "/foo", "", True),
    row("'p- /foo'", "p- /foo", None, "/foo", "", True),
    row("p-bar/foo", "p-bar/foo", None, "bar/foo", "", True),
    row("p-bar/foo/foo", "p-bar/foo/foo", None, "bar/foo/foo", "", True),
    row("p-www.bar.com/foo/foo", "p-www.bar.com/foo/foo", None, "www.bar.com/foo/foo", "", True),
    row("p-WWW.BAR.COM/foo/foo", "p-WWW.BAR.COM/foo/foo", None, "www.bar.com/foo/foo", "", True),
    row("p-bar/foo a b c", "p-bar/foo a b c", None, "bar/foo", "a b c", True),
    row("p-$x/$y", "p-$x/$y", None, "/", "", True),
    row("p-${x}/${y}", "p-${x}/${y}", None, "/", "", True),
    row("p-$x/$Y with env", "p-$x/$Y", ENV, "xx/Yy", "", True),
    row("p-${x}/${Y} with env", "p-${x}/${Y}", ENV, "xx/Yy", "", True),
    row("p-www.bar.com:80/foo redirect=302,https://www.bar.com", "p-www.bar.com:80/foo redirect=302,https://www.bar.com",
        None, "www.bar.com:80/foo", "redirect=302,https://www.bar.com", True),
]


@pytest.mark.parametrize(("tag", "env", "route", "opts", "ok", "outcome"), table(FILE, "TestParseTag", ROWS))
def test_parse_tag(tag: str, env: dict | None, route: str, opts: str, ok: bool, outcome: Outcome) -> None:
    cmds, _ = route_cmds(Instance("svc", "svc-1", "node", "1.1.1.1", 2222, (tag,)), "p-", env)
    assert bool(cmds) is outcome.want(ok)
    if not cmds:
        return
    [cmd] = cmds
    words = []
    for k, v in cmd.opts:  # fabio keeps the option text; we parse redirect=CODE,URL into the command
        words.append(f"{k}={v},{cmd.dst}" if k == "redirect" else f"{k}={v}" if v else k)
    assert (cmd.src, " ".join(words)) == (route, opts)
