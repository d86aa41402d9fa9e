"""A proxy worker's table (router/table/replica.py) assembled from the main process's resolved changes, sent
through pickle as the worker pipe sends them: the same table as the main process's after every update."""

import pickle
import random

import pytest

from router.run import workers
from router.table.assemble import keyed
from router.table.replica import TableReplica
from router.table.routecmd import RouteCmd, parse
from router.table.state import RouterState
from router.table.target import Target
from tests.test_table import MANUAL, _random_service


def _service(rng: random.Random, name: str) -> list[RouteCmd]:
    """test_table's random service, each instance with a source of its own (as the Consul registry gives)."""
    return [RouteCmd(c.op, c.service, c.src, c.dst, c.weight, c.tags, source=f"service:{name}/{c.dst[7:-1]}")
            for c in _random_service(rng, name)]


def _frames(changes: dict, fresh: bool, left: frozenset) -> list[tuple]:
    """What the main process's WorkerPool writes for one update (workers.route_frames), as a worker reads it."""
    return [pickle.loads(f[4:]) for f in workers.route_frames(changes, fresh, left)]


def _sent(state: RouterState) -> list[tuple]:
    return _frames(state.builder.changes, state.builder.fresh, state.left)


def _replay(replica: TableReplica, frames: list[tuple]) -> None:
    for msg in frames:
        assert msg[0] == "routes"
        replica.apply(*msg[1:])


def _same(a, b) -> None:  # noqa: ANN001 - two Tables
    assert a.render() == b.render()
    assert a.dump() == b.dump()
    assert a.routes() == b.routes()
    assert (len(a), a.route_count) == (len(b), b.route_count)
    for host in ["a.com", "x.a.com", "y.a.com", "c.com", "c.com:80", "zz"]:
        for path in ["/", "/p/q/z", "/r"]:
            for tls in (False, True):
                x, y = a.lookup(host, path, tls=tls), b.lookup(host, path, tls=tls)
                assert (x and (x.host, x.path, x.targets)) == (y and (y.host, y.path, y.targets))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("manual", [[], MANUAL])
@pytest.mark.parametrize("matcher", ["prefix", "iprefix", "glob"])
@pytest.mark.parametrize("per_frame", [2000, 2])
def test_the_replica_is_the_main_table_after_every_update(seed: int, manual: list, matcher: str, per_frame: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "ROUTES_PER_FRAME", per_frame)  # 2: most updates come in several parts
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(6)]
    state = RouterState(matcher=matcher)
    replica = TableReplica(matcher=matcher)
    seen: list[dict] = []
    replica.on_swap.append(seen.append)
    state.apply({}, manual)
    _replay(replica, _sent(state))
    current: dict[str, list[RouteCmd]] = {}
    for step in range(25):
        changed = {n: (_service(rng, n) if rng.random() < 0.8 else None)
                   for n in rng.sample(names, 2)}
        new_manual = manual[:3] if step == 12 else None
        was = {c.source for n in changed for c in current.get(n) or ()}
        state.apply(changed, new_manual)
        current.update(changed)
        now = {c.source for n in changed for c in current.get(n) or ()}
        frames = _sent(state)
        assert frames[0][2] == (new_manual is not None and tuple(new_manual) != tuple(manual))  # a full rebuild
        assert [f[4] for f in frames] == [False] * (len(frames) - 1) + [True]
        if new_manual is not None:
            manual = new_manual
        n_swaps = len(seen)
        for msg in frames[:-1]:
            replica.apply(*msg[1:])
            assert len(seen) == n_swaps  # no swap before the last part
        before = replica.table
        replica.apply(*frames[-1][1:])
        assert replica.table is not before or not state.builder.changes
        _same(replica.table, state.table)
        assert seen[-1] == frozenset(was - now) == state.left  # the instances that left, for forget_left
        late = TableReplica(matcher=matcher)  # a worker started now gets the whole table at once
        _replay(late, _frames(keyed(state.table), True, frozenset()))
        _same(late.table, state.table)
    assert any(seen)  # some updates removed instances


def _cmds(text: str) -> dict[str, list[RouteCmd]]:
    cmds, errs = parse(text, "svc")
    assert errs == []
    out: dict[str, list[RouteCmd]] = {}
    for c in cmds:
        out.setdefault(c.service, []).append(c)
    return out


def test_a_route_no_change_touched_keeps_its_object_and_picker_state() -> None:
    state, replica = RouterState(), TableReplica()
    first = _cmds("route add a /a http://10.0.0.1:80/\nroute add a /a http://10.0.0.2:80/\nroute add b /b http://10.0.0.3:80/")
    state.apply(first)
    _replay(replica, _sent(state))
    route_a = replica.table.lookup("", "/a")
    b2 = _cmds("route add b /b http://10.0.0.4:80/")
    state.apply(b2)
    (msg,) = _sent(state)
    assert list(msg[1]) == [("", "/b")]  # only the changed key is sent
    assert msg[3] == frozenset()  # parse() gives every command the same source, "svc": still there
    replica.apply(*msg[1:])
    assert replica.table.lookup("", "/a") is route_a  # shared with the previous table, counters and all
    assert replica.table.lookup("", "/b").targets[0].host == "10.0.0.4"
    same = _cmds("route add a /a http://10.0.0.1:80/\nroute add a /a http://10.0.0.2:80/")
    state.apply({"a": [*same["a"], *_cmds("route add a /c http://10.0.0.5:80/")["a"]]})
    (msg,) = _sent(state)
    assert set(msg[1]) == {("", "/a"), ("", "/c")}
    replica.apply(*msg[1:])
    assert replica.table.lookup("", "/a") is route_a  # resent with equal targets: still the same Route


def test_the_frame_carries_targets_not_commands() -> None:
    """The point of the replica (issue 18): a worker holds no route commands."""
    state = RouterState()
    svc = _cmds('route add a /a http://10.0.0.1:80/ opts "strip=/a"\nroute add a /a https://10.0.0.2/ weight 0.25')
    state.apply(svc)
    changes = _sent(state)[0][1]
    targets = [t for ts in changes.values() for t in ts]
    assert targets and all(type(t) is Target for t in targets)
    by_host = {t.host: t for t in targets}
    assert (by_host["10.0.0.1"].strip, dict(by_host["10.0.0.1"].opts)) == ("/a", {"strip": "/a"})
    assert (by_host["10.0.0.2"].scheme, by_host["10.0.0.2"].port, by_host["10.0.0.2"].opts) == ("https", 443, {})
    assert by_host["10.0.0.2"].fixed_weight == 0.25
    with pytest.raises(TypeError):  # the options are read-only again after the trip
        by_host["10.0.0.1"].opts["x"] = "y"  # type: ignore[index]
    blob = pickle.dumps(changes)
    assert b"RouteCmd" not in blob and b"routecmd" not in blob


POLICY_ROUTES = """route add v1 /api http://10.0.0.1:80/ opts "compress=gzip resphdr.del=Server reqhdr.set=X-A:1"
route add v2 /api http://10.0.0.2:80/ opts "match=X-Version=2 ratelimit=5/s"
route add v2 /api http://10.0.0.3:80/ opts "match=X-Version=2 ratelimit=5/s"
route add s /s http://10.0.0.4:80/ opts "sticky=cookie,name=S,maxage=1h maxbody=1mb strip=/s"
route add t example.com/ https://10.0.0.5/ opts "host=dst tlsskipverify=true proto=https timeout=2s"
route add r /old http://10.0.0.6:80/ opts "redirect=301,https://example.com$path"
"""


def test_policies_and_options_survive_the_trip() -> None:
    state, replica = RouterState(), TableReplica()
    svc = _cmds(POLICY_ROUTES)
    state.apply(svc)
    assert state.errors == []
    _replay(replica, _sent(state))
    _same(replica.table, state.table)
    for host, path in [("", "/api"), ("", "/s"), ("example.com", "/"), ("", "/old")]:
        a, b = replica.table.lookup(host, path), state.table.lookup(host, path)
        assert a.targets == b.targets and [t.policy for t in a.targets] == [t.policy for t in b.targets]
        assert (a.policy is None) == (b.policy is None)
    assert any(t.policy is not None for t in replica.table.lookup("", "/api").targets)
