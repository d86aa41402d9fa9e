"""make_targets (a uniform group at once) builds exactly what make_target builds one by one."""

import pytest

from router.table.routecmd import new_cmd
from router.table.target import CmdError, make_target, make_targets

DSTS = ["http://10.0.0.1:8080/", "http://10.0.0.2:9", "HTTP://h:80/", "http://h/", "https://h:443/x",
        "grpc://h:5", "ws://h:00080/", "http://[::1]:8080/", "http://u:p@h:81/", "http://h:000080/",
        "tcp://h:7", "http://h:/", "wss://h", "http://h:65535/?q", "http://h:1#f"]


@pytest.mark.parametrize("opts", [(), (("proto", "https"),), (("host", "dst"),), (("host", "example.com"),),
                                  (("redirect", "301"),), (("strip", "/a"), ("timeout", "2s"))])
def test_batch_equals_one_by_one(opts):
    cmds = [new_cmd("add", "svc", "/p", d, 0.0, ("t",), opts, i, f"service:svc/{i}") for i, d in enumerate(DSTS)]
    assert make_targets(cmds, 0.25) == [make_target(c, 0.25) for c in cmds]
    assert [t.source for t in make_targets(cmds, 0.25)] == [c.source for c in cmds]


@pytest.mark.parametrize("dst", ["", "h:80", "http://h:65536/", "http://:80/", "http://h:8x/"])
def test_batch_refuses_what_one_by_one_refuses(dst):
    good = new_cmd("add", "svc", "/p", "http://10.0.0.1:80/", 0.0, (), ())
    bad = new_cmd("add", "svc", "/p", dst, 0.0, (), ())
    with pytest.raises(CmdError):
        make_target(bad)
    with pytest.raises(CmdError):
        make_targets([good, bad], 0.5)
