"""Pure rules of the override store: which key a sub-path names, what a version is, which lines are bad."""

from __future__ import annotations

import pytest

from ui.overrides import check, key_for, parse_version


def test_key_for() -> None:
    assert key_for("/fabio/config", "") == "fabio/config"
    assert key_for("/fabio/config/", "/maint") == "fabio/config/maint"
    assert key_for("fabio/config", "a/b") == "fabio/config/a/b"
    for bad in ("../x", "a/../../b", "a//b", "./a"):
        with pytest.raises(ValueError):
            key_for("/fabio/config", bad)


def test_parse_version() -> None:
    assert parse_version("") == 0 and parse_version(None) == 0 and parse_version("17") == 17 and parse_version(5) == 5
    for bad in ("x", "-1", True, [1]):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_check_reports_each_bad_line_once_with_its_number() -> None:
    text = "# comment\nroute add a /a http://127.0.0.1:5/\n\nroute ad x\nroute weight a /a weight lots\nroute del a\n"
    bad = check(text)
    assert [(b.line, b.text) for b in bad] == [(4, "route ad x"), (5, "route weight a /a weight lots")]
    assert all(b.reason for b in bad)
    assert check("route add a /a http://127.0.0.1:5/\n") == []
