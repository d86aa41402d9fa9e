"""fabio's route/picker_test.go, row by row: the rnd and rr pickers over a route with two targets. Pure
rows; fabio replaces its random source, we replace ours (`random.randrange`) the same way."""

from __future__ import annotations

import pytest

from router.table import route as route_mod
from router.table.builder import TableBuilder
from router.table.routecmd import parse
from tests.fabio.rows import Outcome, row, table

FILE = "route/picker_test.go"
FOO, BAR = "http://foo.com/", "http://bar.com/"


def route() -> route_mod.Route:
    cmds, _ = parse(f"route add svc www.bar.com/foo {FOO}\nroute add svc www.bar.com/foo {BAR}")
    tbl, errors = TableBuilder().update(manual=cmds)
    assert errors == []
    r = tbl.lookup("www.bar.com", "/foo")
    assert r is not None
    return r


@pytest.mark.parametrize(("rnd", "want", "outcome"), table(FILE, "TestRndPicker", [
    row("0", 0, FOO), row("1", 1, BAR)]))
def test_rnd_picker(rnd: int, want: str, outcome: Outcome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_mod.random, "randrange", lambda n: rnd)
    assert route().pick("rnd").url == outcome.want(want)


RR = [FOO, BAR, FOO, BAR, FOO, BAR]


@pytest.mark.parametrize(("i", "want", "outcome"), table(FILE, "TestRRPicker", [
    row(str(i), i, url) for i, url in enumerate(RR)]))
def test_rr_picker(i: int, want: str, outcome: Outcome) -> None:
    r = route()  # a new route, so its counter starts at the first target as fabio's does
    picks = [r.pick("rr").url for _ in range(i + 1)]
    assert picks[i] == outcome.want(want)
