"""Tags -> route commands, as fabio builds them; a bad tag is reported and isolated."""

from __future__ import annotations

import pytest

from registry.health import Instance
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
    ],
)
def test_bad_tag_is_reported_and_others_survive(tag: str, reason: str) -> None:
    cmds, errors = route_cmds(inst("urlprefix-/good", tag, "urlprefix-/also-good"))
    assert [c.src for c in cmds] == ["/good", "/also-good"]
    assert len(errors) == 1
    text = str(errors[0])
    assert reason in text and "svc" in text and "svc-1" in text and tag in text


def test_instance_without_address_is_reported() -> None:
    cmds, errors = route_cmds(inst("urlprefix-/a", address=""))
    assert cmds == [] and "no address" in str(errors[0])
