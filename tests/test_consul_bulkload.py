"""The large-catalog paths (registry/consul/bulkload.py, helper.py) against a real agent: the startup load
read node by node in the helper process, and the reconcile read there, must give what the one-request
dump read in the watcher gives (the same route commands, verdicts and digests)."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import msgspec
import orjson
import pytest

from registry.consul import bulkload, dumpsource, helper
from registry.consul.api import ConsulAPI
from registry.consul.dump import Instances, decode_nodes, dump_entries
from registry.consul.dumpfetch import ConsulTarget, DumpUnavailable, Reader
from registry.consul.health import judge_all
from registry.consul.services import build
from registry.consul.status import ServiceStatus
from registry.consul.watcher import ConsulWatcher
from tests.consul_helpers import make_client, register, set_check, uid

pytestmark = pytest.mark.consul


def target(agent: Any) -> ConsulTarget:
    return ConsulTarget(agent.http_url, "consistent", (("Accept-Encoding", "identity"),))


def seed(agent: Any) -> str:
    """Two tagged services (one instance failing, one untagged instance) and an untagged one."""
    c = make_client(agent.port)
    tag = f"bl{uid()}"
    register(c, f"{tag}-web", f"{tag}-web-1", 10001, tags=[f"urlprefix-/{tag}/web", "v1"])
    register(c, f"{tag}-web", f"{tag}-web-2", 10002, tags=[f"urlprefix-/{tag}/web", "v1"], address="127.0.0.2")
    register(c, f"{tag}-api", f"{tag}-api-1", 10003, tags=[f"urlprefix-/{tag}/api weight=0.5"])
    register(c, f"{tag}-api", f"{tag}-api-2", 10004, tags=[])
    register(c, f"{tag}-db", f"{tag}-db-1", 10005, tags=["db"])
    set_check(c, f"{tag}-web-2", "critical")
    return tag


def test_node_by_node_reads_equal_the_dump(consul_agent: Any) -> None:
    """The same tagged services, entries, route commands and digests as from `/v1/internal/ui/nodes`."""
    tag = seed(consul_agent)
    nodes, stats = bulkload.read_nodes(target(consul_agent), concurrency=2)
    raw = httpx.get(f"{consul_agent.http_url}/v1/internal/ui/nodes", timeout=10, trust_env=False).content
    by_node = dump_entries(nodes, "urlprefix-")
    by_dump = dump_entries(orjson.loads(raw), "urlprefix-")
    assert {f"{tag}-web", f"{tag}-api"} <= set(by_node) and f"{tag}-db" not in by_node
    assert set(by_node) == set(by_dump)
    assert Instances.of(by_node) == Instances.of(by_dump)
    for name in by_node:
        a = build(by_node[name], "urlprefix-", {"DC": "dc1"}, ("passing",), False)
        b = build(by_dump[name], "urlprefix-", {"DC": "dc1"}, ("passing",), False)
        assert sorted(a.cmds or [], key=str) == sorted(b.cmds or [], key=str)
        assert sorted(map(str, a.verdicts)) == sorted(map(str, b.verdicts))
    web = {v.instance.id: v.healthy for v in judge_all(by_node[f"{tag}-web"])}
    assert web == {f"{tag}-web-1": True, f"{tag}-web-2": False}
    assert stats.requests == 1 + 2 * stats.nodes and stats.bytes > 0


def test_the_packed_load_unpacks_to_what_build_gives(consul_agent: Any) -> None:
    tag = seed(consul_agent)
    load = bulkload.load(target(consul_agent), "urlprefix-", {"DC": "dc1"}, ("passing",), False)
    packed = {p.name: p for chunk in load.chunks for p in bulkload.unpack(chunk)}
    nodes, _ = bulkload.read_nodes(target(consul_agent))
    entries = dump_entries(nodes, "urlprefix-")
    api = entries[f"{tag}-api"]
    want = build(api, "urlprefix-", {"DC": "dc1"}, ("passing",), False)
    got = packed[f"{tag}-api"]
    assert got.cmds == want.cmds and got.cmds and got.cmds[0].weight == 0.5
    status = ServiceStatus(got.name, None, got.errors, len(got.cmds), 0.0, packed=got.verdicts,
                           counts=(got.healthy, got.instances))
    assert (status.healthy, status.instances) == (2, 2)  # both pass (api-2 has no route tag); known before unpacking
    assert status.verdicts == want.verdicts and len(status.verdicts) == 2  # the untagged instance too
    assert load.services == len(packed)


def test_decode_nodes_keeps_only_the_used_fields_and_rejects_other_shapes() -> None:
    raw = orjson.dumps([{"Node": "n1", "Address": "10.0.0.1", "Meta": {"x": "y"}, "Checks": None,
                         "Services": [{"ID": "a", "Service": "a", "Port": 80, "Tags": None, "Weights": {"Passing": 1}}]}])
    (node,) = decode_nodes(raw)
    assert node["Services"] == [{"ID": "a", "Service": "a", "Address": "", "Port": 80, "Tags": None}]
    assert "Meta" not in node and node["Checks"] is None
    for bad in (b"{}", b"[{\"Services\": [{\"Port\": \"eighty\"}]}]", b"[1"):
        with pytest.raises(ValueError, match="not a list of nodes"):
            decode_nodes(bad)


def test_reader_refuses_an_answer_that_is_not_json(consul_agent: Any) -> None:
    r = Reader(target(consul_agent))
    try:
        with pytest.raises(DumpUnavailable):
            r.get("/v1/no/such/endpoint")
        assert r.get("/v1/catalog/node/", "no such node").strip() == b"null"  # quoted, and answered 200
    finally:
        r.close()


def test_watcher_loads_and_reconciles_through_the_helper(consul_agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the helper threshold at one service, the initial sync runs in the helper process and routes
    every tagged service; a port move is then found by a reconcile the helper reads itself."""
    monkeypatch.setattr(dumpsource, "HELPER_SERVICES", 1)
    tag = seed(consul_agent)
    c = make_client(consul_agent.port)
    table: dict[str, set[str]] = {}

    def sink(changes: dict[str, Any], manual: Any) -> None:
        for name, cmds in changes.items():
            table[name] = {x.dst for x in cmds or ()}

    async def run() -> tuple[dict[str, Any], bool, set[str], dict[str, Any]]:
        w = ConsulWatcher(ConsulAPI(consul_agent.addr), sink, resync=0)
        task = asyncio.ensure_future(w.run())
        try:
            deadline = time.monotonic() + 60
            while not w.status.ready and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            first = dict(w.status.last_dump)
            large = w._dumps.large
            verdicts = {v.instance.id for v in w.status.services[f"{tag}-web"].verdicts}
            # an address move shows in neither the checks nor the tag union: only a reconcile sees it
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: register(c, f"{tag}-api", f"{tag}-api-1", 10013, tags=[f"urlprefix-/{tag}/api weight=0.5"]))
            while table.get(f"{tag}-api") != {"http://127.0.0.1:10013/"} and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return first, large, verdicts | table.get(f"{tag}-api", set()), dict(w.status.last_dump)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            w._dumps.decoder.close()

    first, large, seen, last = asyncio.run(run())
    assert large and first["nodes"] >= 1 and first["requests"] == 1 + 2 * first["nodes"]
    assert last["requests"] == 1 and last["bytes"] > 0  # the reconcile: one dump, read by the helper
    assert table[f"{tag}-web"] == {"http://127.0.0.1:10001/"}  # web-2 is critical
    assert {f"{tag}-web-1", f"{tag}-web-2"} <= seen and "http://127.0.0.1:10013/" in seen
    assert f"{tag}-db" not in table


def test_packed_verdicts_round_trip() -> None:
    from registry.consul.health import Instance, Verdict

    vs = [Verdict(Instance("web", "web-1", "n1", "10.0.0.1", 80, ("urlprefix-/web",)), False, "node is down", False)]
    s = ServiceStatus("web", None, [], 0, 0.0, packed=msgspec.msgpack.encode(vs), counts=(0, 1))
    assert s.verdicts == vs and s.verdicts is s.verdicts  # unpacked once
    assert ServiceStatus("web").verdicts == [] and (ServiceStatus("web", vs).healthy, ServiceStatus("web", vs).instances) == (0, 1)



def _synthetic_nodes(services: dict[str, list[str]], per_service: int = 3) -> list[dict[str, Any]]:
    """One node holding `per_service` passing instances of each service, every instance with the tags given."""
    node: dict[str, Any] = {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "Services": [], "Checks": []}
    for k, (svc, tags) in enumerate(services.items()):
        for i in range(per_service):
            sid = f"{svc}-{i}"
            node["Services"].append({"ID": sid, "Service": svc, "Address": f"10.1.{k}.{i}", "Port": 80, "Tags": tags})
            node["Checks"].append({"CheckID": f"{sid}-chk", "Status": "passing", "ServiceID": sid})
    return [node]


@pytest.mark.parametrize("tags", [
    ["urlprefix-/web"],
    ["urlprefix-/web weight=0.5", "v1", "eu"],
    ["urlprefix-/web strip=/web", "urlprefix-web.example.com/ proto=https", "v2"],
    ["urlprefix-/web weight=-0"],  # -0.0: equal to 0.0, printed differently; must stay -0.0
], ids=["plain", "weight-and-tags", "two-routes-opts", "negative-zero"])
def test_unpack_shares_equal_values_and_changes_none(tags: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """bulkload.unpack: a decoded command's op is the interned literal, a service's commands share its name,
    and equal sources, weights, tags and options are one object (what saves the memory); the commands equal,
    and print as, what msgspec's plain decode gives."""
    nodes = _synthetic_nodes({"web": tags, "api": [t.replace("web", "api") for t in tags]})
    monkeypatch.setattr(bulkload, "read_nodes", lambda target: (nodes, bulkload.ReadStats(0, 0, 1, 0.0)))
    (chunk,) = bulkload.load(None, "urlprefix-", {"DC": "dc1"}, ("passing",), False).chunks  # type: ignore[arg-type]
    plain, shared = bulkload._PACKED.decode(chunk), bulkload.unpack(chunk)
    assert [(p.name, p.cmds) for p in shared] == [(p.name, p.cmds) for p in plain]
    assert [list(map(str, p.cmds or ())) for p in shared] == [list(map(str, p.cmds or ())) for p in plain]
    routes = sum(t.startswith("urlprefix-") for t in tags)
    for p in shared:
        assert p.cmds is not None and len(p.cmds) == 3 * routes
        assert all(c.op is sys.intern("add") and c.service is p.name for c in p.cmds)
        for field in ("src", "weight", "tags", "opts"):
            values = [getattr(c, field) for c in p.cmds]
            assert len({id(v) for v in values}) == len({repr(v) for v in values}), field  # one object per value
    if "-0" in tags[0]:
        assert all(math.copysign(1.0, c.weight) < 0 for p in shared for c in p.cmds or ())


class _Marker:
    """Writes its file when freed: shows whether a process tore its heap down at exit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self, _open: Any = os.open, _close: Any = os.close, _flags: int = os.O_CREAT | os.O_WRONLY) -> None:
        _close(_open(self.path, _flags))  # bound above: builtins and modules may be gone at exit


_KEPT: list[_Marker] = []


def _keep_marker(path: str) -> int:
    _KEPT.append(_Marker(path))
    return os.getpid()


def test_the_startup_helper_exits_without_tearing_down_its_heap(tmp_path: Any) -> None:
    """helper.exit_without_teardown: the one-shot startup helper leaves with os._exit once its pool stops it
    (it holds the load's objects until then), where a plain helper frees what it holds at exit."""
    for init, torn in ((None, True), (helper.exit_without_teardown, False)):
        path = tmp_path / f"torn-{torn}"
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init)
        assert pool.submit(_keep_marker, str(path)).result(timeout=60) != os.getpid()
        pool.shutdown(wait=True)
        assert path.exists() == torn
