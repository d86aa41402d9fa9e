"""Tags -> route commands, as fabio builds them; a bad tag is reported and isolated."""

from __future__ import annotations

import pytest

from registry.consul.health import Instance
from registry.tags import route_cmds


def inst(*tags: str, address: str = "10.0.0.1", port: int = 8080) -> Instance:
    return Instance(service="svc", id="svc-1", node="n1", address=address, port=port, tags=tags)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("urlprefix-/foo", 'route add svc /foo http://10.0.0.1:8080/'),
        ("urlprefix-Example.COM/Foo", 'route add svc example.com/Foo http://10.0.0.1:8080/'),
        ("urlprefix-/foo strip=/foo", 'route add svc /foo http://10.0.0.1:8080/ opts "strip=/foo"'),
        ("urlprefix-/foo proto=https tlsskipverify=true",
         'route add svc /foo https://10.0.0.1:8080 opts "tlsskipverify=true"'),
        ("urlprefix-/foo weight=0.25", 'route add svc /foo http://10.0.0.1:8080/ weight 0.25'),
        ("urlprefix-/p redirect=301,https://x.com$path",
         'route add svc /p https://x.com$path opts "redirect=301"'),
        ("urlprefix-:3306 proto=tcp", 'route add svc :3306 tcp://10.0.0.1:8080'),
        ("urlprefix-$DC.example.com/", 'route add svc dc1.example.com/ http://10.0.0.1:8080/'),
        ("urlprefix-/x blimp", 'route add svc /x http://10.0.0.1:8080/ opts "blimp"'),
        ("  urlprefix-/trim  ", 'route add svc /trim http://10.0.0.1:8080/'),
        # fabio 1.7.3 takes `:port` and slash-less routes verbatim (the table reads `host` as host/ path /)
        ("urlprefix-mysite.com", 'route add svc mysite.com http://10.0.0.1:8080/'),
        ("urlprefix-MySite.com strip=/x", 'route add svc MySite.com http://10.0.0.1:8080/ opts "strip=/x"'),
        ("urlprefix-1.1.1.1:999 proto=tcp", 'route add svc 1.1.1.1:999 tcp://10.0.0.1:8080'),
        ("urlprefix-:1234", 'route add svc :1234 http://10.0.0.1:8080/'),
        # only the host/path form expands variables; unknown ones become "" as in fabio 1.7.3
        ("urlprefix-${DC}/p/$DC", 'route add svc dc1/p/dc1 http://10.0.0.1:8080/'),
        ("urlprefix-$NOPE/p", 'route add svc /p http://10.0.0.1:8080/'),
        ("urlprefix-a.com/$", 'route add svc a.com/$ http://10.0.0.1:8080/'),
    ],
)
def test_tag_to_command(tag: str, expected: str) -> None:
    i = inst(tag.strip())
    cmds, errors = route_cmds(i, env={"DC": "dc1"})
    assert errors == []
    assert [str(c) for c in cmds] == [expected]


def test_other_tags_become_route_tags() -> None:
    cmds, _ = route_cmds(inst("urlprefix-/a", "v1", "green"))
    assert cmds[0].tags == ("v1", "green")
    assert str(cmds[0]).endswith('tags "v1,green"')


def test_several_route_tags_give_several_routes() -> None:
    cmds, errors = route_cmds(inst("urlprefix-/a", "urlprefix-/b"))
    assert [c.src for c in cmds] == ["/a", "/b"] and errors == []


def test_ipv6_address_gets_brackets() -> None:
    cmds, _ = route_cmds(inst("urlprefix-/a", address="::1"))
    assert cmds[0].dst == "http://[::1]:8080/"


def test_custom_prefix() -> None:
    cmds, _ = route_cmds(inst("route-/a", "urlprefix-/b"), prefix="route-")
    assert [c.src for c in cmds] == ["/a"]
    assert cmds[0].tags == ("urlprefix-/b",)


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("urlprefix-", "empty route"),
        ("urlprefix-/w weight=lots", "weight='lots'"),
        ("urlprefix-/w weight=-1", "weight='-1'"),
        ("urlprefix-/r redirect=301", "redirect="),
        ("urlprefix-/p proto=gopher", "unknown proto"),
        ('urlprefix-/q opt="x"', "quote"),
        ('urlprefix-/a"b', "quotes or control characters"),
        ("urlprefix-/a\x01b", "quotes or control characters"),
        # slash-less routes are taken verbatim, so a variable in one would route a literal "$dc" host
        ("urlprefix-$DC", "add a slash"),
        ("urlprefix-${DC}.example.com", "add a slash"),
        ("urlprefix-$DC.example.com strip=/x", "add a slash"),
        ("urlprefix-:$PORT proto=tcp", "add a slash"),
    ],
)
def test_bad_tag_is_reported_and_others_survive(tag: str, reason: str) -> None:
    cmds, errors = route_cmds(inst("urlprefix-/good", tag, "urlprefix-/also-good"))
    assert [c.src for c in cmds] == ["/good", "/also-good"]
    assert len(errors) == 1
    text = str(errors[0])
    assert errors[0].tag == tag
    assert reason in text and "service svc " in text and "instance svc-1" in text and repr(tag) in text


def test_instance_without_address_is_reported() -> None:
    cmds, errors = route_cmds(inst("urlprefix-/a", address=""))
    assert cmds == [] and "no address" in str(errors[0])


@pytest.mark.parametrize(("tag", "host", "path"), [
    ("urlprefix-mysite.com", "mysite.com", "/anything"),
    ("urlprefix-MySite.COM", "mysite.com", "/"),
    ("urlprefix-mysite.com/", "mysite.com", "/x"),
])
def test_slash_less_tag_routes_the_whole_host(tag: str, host: str, path: str) -> None:
    """fabio 1.7.3: `urlprefix-mysite.com` is the host `mysite.com` with path `/` (a catch-all for it)."""
    from router.table.builder import TableBuilder

    cmds, errors = route_cmds(inst(tag))
    assert errors == []
    table, table_errors = TableBuilder().update({"svc": cmds})
    assert table_errors == []
    route = table.lookup(host, path)
    assert route is not None and route.path == "/"
    assert table.lookup("other.com", path) is None
