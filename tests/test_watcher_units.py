"""Unit tests of the watcher's pure diffing helpers and its bulk-read fallback (no Consul needed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

import registry.consul.watcher as watcher_module
from registry.consul.api import ConsulAPI, ConsulError
from registry.consul.dump import Instances, summarize
from registry.consul.dump import catalog_fingerprints as _catalog_fingerprints
from registry.consul.dump import dump_entries as _dump_entries
from registry.consul.dump import node_services as _node_services
from registry.consul.fingerprints import health_fingerprints as _health_fingerprints
from registry.consul.fingerprints import nonpassing_fingerprints as _nonpassing_fingerprints
from registry.consul.health import judge_all
from registry.consul.helper import DumpDecoder
from registry.consul.watcher import ConsulWatcher, RegistryStatus


def node(name: str, services: list[dict[str, Any]], checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Node": name, "Address": "10.0.0.1", "Services": services, "Checks": checks}


def svc(sid: str, name: str, port: int, tags: list[str], address: str = "") -> dict[str, Any]:
    return {"ID": sid, "Service": name, "Port": port, "Tags": tags, "Address": address}


def check(cid: str, status: str, sid: str = "", node_name: str = "n1") -> dict[str, Any]:
    return {"Node": node_name, "CheckID": cid, "Status": status, "ServiceID": sid}


DUMP = [
    node("n1", [svc("web-1", "web", 80, ["urlprefix-/web"]), svc("db-1", "db", 5432, [])],
         [check("serfHealth", "passing"), check("web-1-ttl", "passing", "web-1"), check("db-1-ttl", "passing", "db-1")]),
    node("n2", [svc("web-2", "web", 81, [], address="10.0.0.9")],
         [check("serfHealth", "critical", node_name="n2"), check("web-2-ttl", "passing", "web-2", "n2")]),
]


def test_dump_entries_keeps_tagged_services_with_all_their_instances() -> None:
    entries = _dump_entries(DUMP, "urlprefix-")
    assert set(entries) == {"web"}  # db has no urlprefix- tag
    assert len(entries["web"]) == 2  # the untagged instance is kept for the UI's verdicts
    verdicts = {v.instance.id: v for v in judge_all(entries["web"])}
    assert verdicts["web-1"].healthy
    assert not verdicts["web-2"].healthy and "serfHealth" in verdicts["web-2"].reason
    assert verdicts["web-2"].instance.address == "10.0.0.9"
    assert verdicts["web-1"].instance.address == "10.0.0.1"  # falls back to the node's address


def test_catalog_fingerprint_changes_on_port_move_only_for_that_service() -> None:
    before = _catalog_fingerprints(_dump_entries(DUMP, "urlprefix-"))
    moved = [dict(n) for n in DUMP]
    moved[0] = node("n1", [svc("web-1", "web", 8080, ["urlprefix-/web"])], DUMP[0]["Checks"])
    after = _catalog_fingerprints(_dump_entries(moved, "urlprefix-"))
    assert before["web"] != after["web"]
    assert _catalog_fingerprints(_dump_entries(DUMP, "urlprefix-")) == before


def test_health_fingerprint_sees_node_check_of_a_service_node() -> None:
    checks = [c for n in DUMP for c in n["Checks"]]
    for c in checks:
        c.setdefault("ServiceName", {"web-1": "web", "web-2": "web", "db-1": "db"}.get(c["ServiceID"], ""))
        c.setdefault("ServiceTags", ["urlprefix-/web"] if c["ServiceID"] == "web-1" else [])
    before = _health_fingerprints(checks, "urlprefix-")
    flipped = [dict(c, Status="passing") if c["CheckID"] == "serfHealth" else c for c in checks]
    assert set(before) == {"web"}
    assert _health_fingerprints(flipped, "urlprefix-")["web"] != before["web"]


def test_propagation_summary_nearest_rank() -> None:
    st = RegistryStatus()
    assert st.propagation_summary()["count"] == 0
    for ms in range(1, 11):
        st.propagated(float(ms))
    s = st.propagation_summary()
    assert (s["count"], s["p50_ms"], s["p90_ms"], s["max_ms"], s["last_ms"]) == (10, 5.0, 9.0, 10.0, 10.0)


@respx.mock(using="httpx")
def test_startup_falls_back_to_per_service_mode_when_dump_is_missing(respx_mock: respx.MockRouter) -> None:
    """Without /v1/internal/ui/nodes at startup, a catalog change re-reads every tagged service."""
    respx_mock.get("http://c:8500/v1/internal/ui/nodes").mock(return_value=httpx.Response(404))
    w = ConsulWatcher(ConsulAPI("c:8500", transport=httpx.AsyncHTTPTransport()), lambda s, m: None)
    w._catalog_tags = {"web": ("urlprefix-/web",), "api": ("urlprefix-/api",)}

    async def run() -> None:
        await w._reconcile_instances()
        await w._reconcile_instances()

    asyncio.run(run())
    assert w._rereads.pending == {"web", "api"}
    assert w._dump_ok is False
    assert respx_mock.calls.call_count == 1  # the missing endpoint is not asked again


@respx.mock(using="httpx")
def test_dump_failure_after_startup_is_an_error_not_a_mode_switch(respx_mock: respx.MockRouter) -> None:
    respx_mock.get("http://c:8500/v1/internal/ui/nodes").mock(return_value=httpx.Response(404))
    w = ConsulWatcher(ConsulAPI("c:8500", transport=httpx.AsyncHTTPTransport()), lambda s, m: None)
    w.status.ready = True
    with pytest.raises(ConsulError):
        asyncio.run(w._reconcile_instances())
    assert w._dump_ok is True


def test_nonpassing_fingerprint_maps_node_checks_to_the_services_on_that_node() -> None:
    entries = _dump_entries(DUMP, "urlprefix-")
    nodes = _node_services(entries)
    tagged = {"web": ("urlprefix-/web",)}
    healthy = _nonpassing_fingerprints([], nodes, tagged)
    n1_down = _nonpassing_fingerprints([check("serfHealth", "critical", node_name="n1")], nodes, tagged)
    db_down = _nonpassing_fingerprints([dict(check("db-1-ttl", "critical", "db-1"), ServiceName="db")], nodes, tagged)
    assert healthy == {} and db_down == {}  # db is not routed: its checks do not matter
    assert set(n1_down) == {"web"}


def test_helper_process_gives_what_the_watcher_would_compute_itself() -> None:
    """The reconcile's decoding in the spawned helper equals the in-process result (digests cross processes)."""
    raw = json.dumps(DUMP).encode()
    local = Instances.of(_dump_entries(DUMP, "urlprefix-"))
    decoder = DumpDecoder(in_process_bytes=0)  # every dump goes to the helper

    async def run() -> Instances:
        return await decoder.summarize(raw, "urlprefix-")

    try:
        remote = asyncio.run(run())
        helper_started = decoder._pool is not None
    finally:
        decoder.close()
    assert remote == local == summarize(raw, "urlprefix-")
    assert decoder._broken is False and helper_started  # it really ran in the helper
    assert set(remote.fingerprints) == {"web"} and remote.node_services == {"n1": {"web"}, "n2": {"web"}}


def test_small_dumps_start_no_helper_process() -> None:
    decoder = DumpDecoder()  # the default threshold: a small catalog's dump is decoded in the watcher
    got = asyncio.run(decoder.summarize(json.dumps(DUMP).encode(), "urlprefix-"))
    assert got == Instances.of(_dump_entries(DUMP, "urlprefix-")) and decoder._pool is None


def test_warm_starts_the_niced_helper_ahead_only_for_large_dumps() -> None:
    """The helper is started at startup when the dumps are large (its start fell on the first change), and
    runs at a lower priority than the watcher (it must not take the CPU from the event loop or Consul)."""
    import os

    small, large = DumpDecoder(), DumpDecoder(in_process_bytes=100)

    async def run() -> tuple[int | None, int]:
        assert small.warm(99) is None and small._pool is None
        fut = large.warm(100)
        assert fut is not None and large.warm(100) is None  # once
        pid = await fut
        nice = await asyncio.get_running_loop().run_in_executor(large._pool, os.nice, 0)
        return pid, nice

    try:
        pid, nice = asyncio.run(run())
    finally:
        large.close()
    assert pid != os.getpid()
    assert nice >= os.nice(0) + 10 or nice == 19  # niced by 10 (capped at 19)


def test_broken_helper_falls_back_to_decoding_in_process() -> None:
    decoder = DumpDecoder(in_process_bytes=0)

    class Broken:
        def submit(self, *a: Any, **k: Any) -> Any:
            from concurrent.futures.process import BrokenProcessPool
            raise BrokenProcessPool("helper died")

        def shutdown(self, **k: Any) -> None:
            pass

    decoder._pool = Broken()  # type: ignore[assignment]
    got = asyncio.run(decoder.summarize(json.dumps(DUMP).encode(), "urlprefix-"))
    assert got == Instances.of(_dump_entries(DUMP, "urlprefix-")) and decoder._broken
    with pytest.raises(ValueError, match="not a list of nodes"):
        summarize(b"{}", "urlprefix-")


def test_a_service_tagged_after_its_failing_check_was_seen_notices_the_check_passing() -> None:
    """The health answer that shows a new instance's critical check can come before the catalog answer
    that shows its urlprefix tag; its check then turning passing must still count as a change (found at
    30,000 instances: the route waited seconds for the instance reconcile)."""
    w = ConsulWatcher(ConsulAPI("c:8500", transport=httpx.AsyncHTTPTransport()), lambda s, m: None)
    critical = [dict(check("fresh-1-ttl", "critical", "fresh-1"), ServiceName="fresh")]
    w._on_health(critical)  # not tagged yet: ignored
    assert w._rereads.pending == set()
    w._on_catalog({"fresh": ["urlprefix-/fresh"]})
    assert w._rereads.pending == {"fresh"}  # the tag change itself
    w._rereads.pending.clear()
    w._on_health([])  # the check passes
    assert w._rereads.pending == {"fresh"}


def test_a_new_instance_node_check_counts_before_the_next_reconcile() -> None:
    """The node -> services map comes from the instance dump; a service re-read meanwhile adds its nodes,
    so a node check failing on a new instance's node is a change for it right away."""
    w = ConsulWatcher(ConsulAPI("c:8500", transport=httpx.AsyncHTTPTransport()), lambda s, m: None)
    w._on_catalog({"fresh": ["urlprefix-/fresh"]})
    entry = {"Node": {"Node": "n9", "Address": "10.0.0.9"},
             "Service": {"ID": "fresh-1", "Service": "fresh", "Port": 80, "Tags": ["urlprefix-/fresh"]},
             "Checks": [check("serfHealth", "passing", node_name="n9"), check("fresh-1-ttl", "passing", "fresh-1", "n9")]}
    w._learn_nodes("fresh", [entry])
    w._rereads.pending.clear()
    w._on_health([check("serfHealth", "critical", node_name="n9")])
    assert w._rereads.pending == {"fresh"}
    w._rereads.pending.clear()
    w._learn_nodes("fresh", [entry])  # known already: nothing re-diffed, nothing queued
    assert w._rereads.pending == set()


def test_an_unchanged_service_is_no_swap_and_no_propagation_sample() -> None:
    """A reconcile re-reads services it cannot rule out; when their commands are what the table has, the
    table is not touched and the router-observed delay is not sampled (it reported seconds for them)."""
    from router.table.routecmd import RouteCmd

    swaps: list[dict] = []
    w = ConsulWatcher(ConsulAPI("c:8500"), lambda s, m: swaps.append(dict(s)))
    cmds = [RouteCmd("add", "web", "/web", "http://10.0.0.1:80/")]
    w._rereads.emit({"web": cmds}, None, 0.0)
    w._rereads.emit({"web": list(cmds)}, None, 0.0)  # equal commands: nothing to do
    w._rereads.emit({"gone": None}, None, 0.0)  # removing what the table does not have: nothing either
    assert swaps == [{"web": cmds}] and w.status.propagation_count == 1
    w._rereads.emit({"web": None, "db": None}, None, 0.0)
    assert swaps[-1] == {"web": None} and w.status.propagation_count == 2
    w._rereads.emit({}, [], 0.0)  # an override change always goes through
    assert len(swaps) == 3 and w.status.propagation_count == 3


@pytest.mark.parametrize("hold, kept", [(45.0, True), (0.0, False)])
def test_unrun_hold_keeps_a_routed_instance_unless_turned_off(hold: float, kept: bool) -> None:
    """registry.consul.unrunhold: a routed instance whose check has not run since its agent restarted
    (critical, no output, not TTL) keeps its route for that long; 0 turns the hold off."""
    w = ConsulWatcher(ConsulAPI("c:8500"), lambda s, m: None, unrun_hold=hold)

    def entry(status: str, output: str) -> dict[str, Any]:
        c = dict(check("web-1-http", status, "web-1"), Type="http", Output=output)
        return {"Node": {"Node": "n1", "Address": "10.0.0.1"},
                "Service": {"ID": "web-1", "Service": "web", "Port": 80, "Tags": ["urlprefix-/web"]}, "Checks": [c]}

    async def main() -> tuple[Any, Any]:
        before = w._routes.commands("web", [entry("passing", "HTTP GET: 200 OK")])
        return before, w._routes.commands("web", [entry("critical", "")])  # reloaded, not run yet

    before, after = asyncio.run(main())
    assert before and (after is not None) is kept


def test_large_buffers_come_from_mmap_on_glibc() -> None:
    """The dumps' buffers must not fragment the heap (RSS growing per dump): on glibc mallopt accepts the
    threshold; elsewhere the call says it changed nothing."""
    import platform

    from registry.consul.helper import large_buffers_from_mmap

    assert large_buffers_from_mmap() is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize(
    ("tags", "prefix", "counted"),
    [
        (["urlprefix-/new"], "urlprefix-", True),  # its own tags say it is routed: counted before the catalog does
        ([" urlprefix-/new"], "urlprefix-", True),  # tags are matched stripped, as everywhere
        (["other"], "urlprefix-", False),
        ([], "urlprefix-", False),
        (["urlprefix-/new"], None, False),  # without the prefix only the known tagged set counts
    ],
)
def test_a_new_services_own_check_tags_make_it_count(tags: list[str], prefix: str | None, counted: bool) -> None:
    c = dict(check("new-1-ttl", "critical", "new-1"), ServiceName="new", ServiceTags=tags)
    fps = _nonpassing_fingerprints([c], {}, set(), prefix)
    assert ("new" in fps) is counted


CATALOG_SEQUENCES = [
    [{"a": ["urlprefix-/a"], "b": ["x"]}, {"a": ["urlprefix-/a"], "b": ["urlprefix-/b"]}, {"b": ["urlprefix-/b"]}],
    [{"a": ["urlprefix-/a"]}, {"a": ["urlprefix-/a", "v2"]}, {"a": ["v2"]}, {}],
    [{}, {"c": [" urlprefix-/c"]}, {"c": [" urlprefix-/c"], "d": []}, {"c": [" urlprefix-/c"], "d": []}],
]


@pytest.mark.parametrize("answers", CATALOG_SEQUENCES)
def test_catalog_answers_compared_by_difference_give_the_full_computation(answers: list[dict[str, list[str]]]) -> None:
    """`_on_catalog` only looks at names whose tag list changed; the result must equal a full recomputation,
    and exactly the services whose route-tag union changed become pending."""
    w = ConsulWatcher(ConsulAPI("c:8500", transport=httpx.AsyncHTTPTransport()), lambda s, m: None)
    before: dict[str, tuple[str, ...]] = {}
    for services in answers:
        w._rereads.pending.clear()
        w._on_catalog(services)
        full = {n: tuple(t) for n, t in services.items() if any(x.strip().startswith("urlprefix-") for x in t)}
        assert w._catalog_tags == full
        assert w._rereads.pending == {n for n in full.keys() | before.keys() if full.get(n) != before.get(n)}
        before = full


def _entry(sid: str, port: int, status: str = "passing") -> dict[str, Any]:
    return {"Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {"ID": sid, "Service": "web", "Port": port, "Tags": ["urlprefix-/web"]},
            "Checks": [{"CheckID": f"{sid}-ttl", "Status": status, "ServiceID": sid}]}


def test_a_result_with_a_lower_service_index_never_replaces_a_newer_one() -> None:
    """A re-read and the service's hot watch may cross: the per-service index orders them."""
    applied: list[dict[str, Any]] = []
    w = ConsulWatcher(ConsulAPI("c:8500"), lambda s, m: applied.append(s))

    async def run() -> None:
        w._rereads._accept("web", [_entry("web-1", 81)], 20, None)  # the hot watch's newer answer
        w._rereads._accept("web", [_entry("web-1", 80)], 19, None)  # a re-read that left earlier, answered later
        await asyncio.sleep(0)
        w._rereads._accept("web", [_entry("web-1", 82)], 21, None)
        await asyncio.sleep(0)

    asyncio.run(run())
    ports = [{c.dst for c in batch["web"]} for batch in applied]
    assert ports == [{"http://10.0.0.1:81/"}, {"http://10.0.0.1:82/"}]


def test_a_service_changed_during_its_read_is_read_again_and_others_do_not_wait() -> None:
    """Reads run beside each other: a slow read of `a` does not hold `b`'s result, and `a` changing while
    it is read gets a second read whose result is the one kept."""
    applied: list[dict[str, Any]] = []
    w = ConsulWatcher(ConsulAPI("c:8500"), lambda s, m: applied.append(dict(s)), hot_limit=0)  # no I/O
    gate = asyncio.Event()
    reads: list[str] = []

    async def read(name: str) -> tuple[list[dict[str, Any]], int]:
        reads.append(name)
        n = reads.count(name)
        if name == "a" and n == 1:
            await gate.wait()  # the first read of a is slow
        return [dict(_entry(f"{name}-1", 80 + n), Service={**_entry(f"{name}-1", 80 + n)["Service"], "Service": name})], n

    w._rereads.read = read  # type: ignore[method-assign]

    async def run() -> None:
        loop = asyncio.ensure_future(w._rereads.run(w._start_reconcile))
        w._enqueue({"a", "b"})
        for _ in range(5):
            await asyncio.sleep(0)
        assert [set(x) for x in applied] == [{"b"}]  # b did not wait for a
        w._enqueue({"a"})  # a changes while its first read is in flight
        for _ in range(5):
            await asyncio.sleep(0)
        assert reads.count("a") == 1  # never two reads of one service at once
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(run())
    assert reads.count("a") == 2
    last_a = [x["a"] for x in applied if "a" in x][-1]
    assert {c.dst for c in last_a} == {"http://10.0.0.1:82/"}  # the second read's state


def test_hot_watches_keep_the_most_recently_changed_within_the_limit() -> None:
    """At most `limit` services are watched; the least recently changed one is dropped for a new one."""
    import asyncio

    from registry.consul.hot import HotWatches

    class BlockingAPI:
        async def get(self, path: str, **kw):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()  # a blocking query that never answers

    async def run() -> tuple[set[str], set[str]]:
        hot = HotWatches(BlockingAPI(), lambda *a: None, limit=2)  # type: ignore[arg-type]
        hot.touch("a", 10)
        await asyncio.sleep(0.01)
        hot.touch("b", 11)
        await asyncio.sleep(0.01)
        hot.touch("a", 12)  # a changed again: now b is the coldest
        first = hot.names()
        hot.touch("c", 13)
        second = hot.names()
        hot.clear()
        return first, second

    first, second = asyncio.run(run())
    assert first == {"a", "b"}
    assert second == {"a", "c"}


def test_a_health_change_the_hot_watch_brings_is_not_read_again() -> None:
    """A health answer's change of a service is not re-read when the applied entries already show the same
    non-passing checks, or when its hot watch waits below the answer's index (the same commit wakes it);
    when that watch is stopped instead, the service is read at once."""
    from registry.consul.fingerprints import nonpassing_of

    w = ConsulWatcher(ConsulAPI("c:8500"), lambda s, m: None)
    rr = w._rereads
    parked: dict[str, int] = {}
    rr.hot.parked = parked.get  # type: ignore[method-assign]
    critical = nonpassing_of([_entry("web-1", 80, "critical")])
    assert critical == {("", "web-1", "web-1-ttl", "critical")}  # the facts the state watches give

    async def run() -> None:
        rr._accept("web", [_entry("web-1", 80, "critical")], 20, None)  # the hot watch answered first
        rr.enqueue({"web"}, None, 21, {"web": critical})  # the health answer shows the same checks
        assert rr.pending == set() and rr.status.covered == 1
        rr.enqueue({"web"}, None, 22, {})  # the check passes: the entries applied say critical
        assert rr.pending == {"web"}  # no hot watch waiting: read
        rr.pending.clear()
        parked["web"] = 20
        rr.enqueue({"web"}, None, 23, {})  # now its watch waits below 23: it brings the change
        assert rr.pending == set() and "web" in rr._expect
        rr._accept("web", [_entry("web-1", 80, "passing")], 23, None)  # ... and does
        assert "web" not in rr._expect
        rr.enqueue({"web"}, None, 24, {"web": critical})
        assert rr.pending == set() and "web" in rr._expect
        rr._dropped("web")  # its watch is stopped before answering
        assert rr.pending == {"web"} and "web" not in rr._expect

    asyncio.run(run())


def test_after_the_initial_load_its_objects_are_frozen_without_a_collection() -> None:
    """ConsulWatcher.after_load (run() calls it while the GC is still paused after the initial sync): the
    objects move out of the GC's generations (gc.freeze) without a collection walking them first (at
    100,000 instances that took seconds and found 0-5 unreachable objects)."""
    import gc
    import weakref

    class Node:
        pass

    was = gc.isenabled()
    gc.disable()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]  # a cycle only a collection frees
        gone = weakref.ref(a)
        del a, b
        frozen = gc.get_freeze_count()
        ConsulWatcher.after_load()
        assert gc.get_freeze_count() > frozen and gc.get_count()[0] == 0
        assert gone() is not None  # not collected: no collection ran
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
    gc.collect()
    assert gone() is None


class _Stop(Exception):
    pass


@pytest.mark.parametrize("retry, cap", [(0.5, 0.5), (2.0, 2.0), (0.0, 0.1)])
@respx.mock(using="httpx")
def test_registry_retry_caps_the_waits_of_the_initial_sync(respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch,
                                                           retry: float, cap: float) -> None:
    """registry.retry is the longest wait between two tries of the first read (fabio's retry interval); the
    first retry comes after 0.1 s, and 0 does not make the watcher spin."""
    respx_mock.get("http://c:8500/v1/agent/self").mock(return_value=httpx.Response(500, text="no leader"))
    waits: list[float] = []

    async def sleep(d: float) -> None:
        waits.append(d)
        if len(waits) == 8:
            raise _Stop

    w = ConsulWatcher(ConsulAPI("c:8500", transport=httpx.AsyncHTTPTransport()), lambda s, m: None, retry=retry)
    monkeypatch.setattr(watcher_module.asyncio, "sleep", sleep)
    with pytest.raises(_Stop):
        asyncio.run(w._initial_sync())
    assert 0.08 <= waits[0] <= 0.12  # 0.1 s +-20 % jitter
    assert all(x <= cap * 1.2 for x in waits), waits
    assert waits[-1] >= cap * 0.8, waits  # it reached the cap and stays there
    assert w.status.error_count == len(waits) and "initial sync" in w.status.errors[-1][1]
