"""Issue 17's parts on their own: retry budget, weight groups, p2c picking, instance identity, ejection cap.

No sockets and no clocks: times are passed in, and the assertions count picks and tokens, never time.
The pickers' randomness is seeded so a share check is exact for the run, not a matter of luck.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.proxy.balance import Balancer
from router.proxy.budget import WINDOW, RetryBudget
from router.proxy.ejection import EjectPolicy
from router.proxy.picker import FULL, weight_groups
from router.table.builder import TableBuilder
from router.table.routecmd import RouteCmd, parse
from router.table.state import RouterState


def _add(service: str, src: str, dst: str, instance: str, weight: float = 0.0) -> RouteCmd:
    return RouteCmd("add", service, src, dst, weight=weight, source=f"service:{service}/{instance}")


# --- budget

def test_budget_allows_the_floor_plus_a_share_of_the_requests() -> None:
    b = RetryBudget(ratio=0.2, floor=1.0)  # floor: 1 retry/s, so 10 over the window
    for _ in range(100):
        b.deposit(5.0)
    granted = sum(b.withdraw(5.5) for _ in range(100))
    assert granted == 10 + 20  # floor x window + 20% of 100 requests
    assert b.exhausted == 100 - granted


def test_budget_forgets_what_left_the_window() -> None:
    b = RetryBudget(ratio=0.0, floor=0.5)  # 5 retries per window, no share
    assert sum(b.withdraw(100.0) for _ in range(10)) == 5
    assert not b.withdraw(100.0 + WINDOW - 1)  # still inside the window
    assert sum(b.withdraw(100.0 + WINDOW) for _ in range(10)) == 5  # second 100 left it: tokens again


def test_budget_without_floor_or_share_refuses_every_retry() -> None:
    b = RetryBudget(ratio=0.0, floor=0.0)
    b.deposit(1.0)
    assert not b.withdraw(1.0) and b.exhausted == 1


# --- weight groups

@pytest.mark.parametrize(("weights", "groups", "cum"), [
    ([0.5, 0.5], ((0, 1),), None),
    ([1.0], ((0,),), None),
    ([0.45, 0.1, 0.45], ((0, 2), (1,)), [0.9, 1.0]),
    ([0.05, 0.05, 0.3, 0.3, 0.3], ((0, 1), (2, 3, 4)), [0.1, 1.0]),
])
def test_weight_groups(weights: list[float], groups: tuple, cum: list[float] | None) -> None:
    got_groups, got_cum = weight_groups(weights)
    assert got_groups == groups
    assert got_cum == cum if cum is None else got_cum == pytest.approx(cum)


def _canary_route():  # type: ignore[no-untyped-def]
    services = {"svc": [_add("svc", "/app", f"http://10.0.0.{i}:80/", f"i{i}") for i in range(1, 5)]}
    canary = {"canary": [RouteCmd("add", "canary", "/app", "http://10.0.1.1:80/", tags=("canary",),
                                  source="service:canary/c1")]}
    manual, errors = parse('route weight /app weight 0.1 tags "canary"')
    assert not errors
    builder = TableBuilder()
    table, errs = builder.update({**services, **canary}, manual)
    assert not errs
    return table.lookup("", "/app")


@pytest.mark.parametrize("strategy", ["p2c", "rnd", "rr"])
def test_a_ten_percent_canary_gets_ten_percent_of_10000_requests(strategy: str) -> None:
    """The weight holds under load-aware picking: requests are simulated with in-flight counts and latency
    observations that differ between instances (the canary is the fastest, which p2c would otherwise favour)."""
    random.seed(17)
    route = _canary_route()
    lb = Balancer(strategy)
    p = lb.picker(route)
    canary = next(i for i, t in enumerate(p.targets) if t.service == "canary")
    hits: Counter[int] = Counter()
    in_flight: list[int] = []
    now = 0.0
    for n in range(10_000):
        now += 0.001
        i = p.pick(now)
        hits[i] += 1
        p.states[i].outstanding += 1
        in_flight.append(i)
        if len(in_flight) > 8:  # 8 requests in flight; the oldest completes
            j = in_flight.pop(0)
            p.states[j].outstanding -= 1
            lb.try_succeeded(p.states[j], 0.001 if j == canary else 0.002 + 0.001 * (n % 3), now)
    assert 900 <= hits[canary] <= 1100, hits
    others = [hits[i] for i in range(len(p.targets)) if i != canary]
    assert sum(others) == 10_000 - hits[canary] and min(others) > 0


def test_p2c_sends_little_to_an_instance_ten_times_slower() -> None:
    """Three instances, one answers in 10x the time: p2c sends it a small share (probes), rnd a third."""
    random.seed(7)
    cmds = {"svc": [_add("svc", "/s", f"http://10.0.0.{i}:80/", f"i{i}") for i in range(3)]}
    route = TableBuilder().update(cmds)[0].lookup("", "/s")
    shares = {}
    for strategy in ("p2c", "rnd"):
        lb = Balancer(strategy, decay=1.0)
        p = lb.picker(route)
        slow = 0
        hits: Counter[int] = Counter()
        pending: list[tuple[float, int]] = []  # (completion time, index)
        now = 0.0
        for _ in range(20_000):  # 2,000 requests/s for 10 s; latency 2 ms, the slow one 20 ms
            now += 0.0005
            while pending and pending[0][0] <= now:
                _, j = pending.pop(0)
                p.states[j].outstanding -= 1
                lb.try_succeeded(p.states[j], 0.02 if j == slow else 0.002, now)
            i = p.pick(now)
            hits[i] += 1
            p.states[i].outstanding += 1
            pending.append((now + (0.02 if i == slow else 0.002), i))
            pending.sort()
        shares[strategy] = hits[slow] / 20_000
        route.lb = None
    assert shares["rnd"] > 0.3
    assert shares["p2c"] < 0.02  # below 2%: the p99 of all requests does not see it


# --- instance identity

def test_failure_state_belongs_to_the_instance_and_leaves_with_it() -> None:
    """Two routes of one instance share its state; a new instance on the same address (another Consul
    ID, as Docker hands a freed address to the next container) starts clean, even within one build."""
    lb = Balancer("p2c", policy=EjectPolicy(failures=1, duration=60.0))
    builder = TableBuilder()
    old = [_add("svc", "/a", "http://10.0.0.9:80/", "old"), _add("svc", "/b", "http://10.0.0.9:80/", "old"),
           _add("svc", "/a", "http://10.0.0.8:80/", "other"), _add("svc", "/b", "http://10.0.0.8:80/", "other")]
    table, _ = builder.update({"svc": old})
    pa, pb = lb.picker(table.lookup("", "/a")), lb.picker(table.lookup("", "/b"))
    ia = next(i for i, t in enumerate(pa.targets) if t.host == "10.0.0.9")
    ib = next(i for i, t in enumerate(pb.targets) if t.host == "10.0.0.9")
    assert pa.states[ia] is pb.states[ib]  # one instance, one state, whichever route it serves
    lb.try_failed(pa.states[ia], 0.0, 0.0, "refused", connect=True)
    assert pb.states[ib].until == 60.0  # ejected for both routes
    assert {pb.pick(1.0) for _ in range(20)} == {1 - ib}

    new = [_add("svc", "/a", "http://10.0.0.9:80/", "new"), *old[2:3]]  # same address, another instance, one build
    in_flight = table  # a request still running on the old table keeps its routes (and states) alive
    table, _ = builder.update({"svc": new})
    p = lb.picker(table.lookup("", "/a"))
    fresh = next(s for s in p.states if s.addr == "10.0.0.9:80")
    assert (fresh.until, fresh.fails, fresh.failures) == (0.0, 0, 0)
    assert {p.pick(2.0) for _ in range(40)} == {0, 1}
    assert pa.states[ia].until == 60.0  # the old instance's state is its own (requests on the old table)
    del in_flight, pa, pb
    assert not [s for s in lb.states() if s.key[0] == "service:svc/old"]  # once they are done, it is gone


def test_an_instance_back_with_its_id_and_address_after_it_left_starts_clean() -> None:
    """Registrator's ID is host:container-name:port: a container recreated under its name on the freed
    address comes back with the old ID and address. Once the old one has left the table (a swap without
    it), its state is forgotten even while something still holds the old picker (a request in flight, or
    cyclic garbage the collector has not reached): found end to end with Docker (tests/container_faults)."""
    lb = Balancer("p2c", policy=EjectPolicy(failures=1, duration=60.0))
    state = RouterState()
    state.on_swap.append(lb.forget_left)
    both = [_add("svc", "/a", "http://10.0.0.9:80/", "x"), _add("svc", "/a", "http://10.0.0.8:80/", "other")]
    table = state.apply({"svc": both, "unrelated": [_add("unrelated", "/u", "http://10.0.0.7:80/", "u")]})
    held = lb.picker(table.lookup("", "/a"))  # kept alive on purpose, as a request in flight does
    lb.picker(table.lookup("", "/u")).states[0].failures = 5
    old = next(s for s in held.states if s.addr == "10.0.0.9:80")
    lb.try_failed(old, 0.0, 0.0, "refused", connect=True)
    assert old.until == 60.0

    state.apply({"svc": both[1:]})  # it left
    table = state.apply({"svc": both})  # it is back: the same source, host and port
    again = next(s for s in lb.picker(table.lookup("", "/a")).states if s.addr == "10.0.0.9:80")
    assert again is not old and (again.until, again.fails, again.failures, again.ejections) == (0.0, 0, 0, 0)
    assert old.until == 60.0  # the old picker keeps its own state
    other = [s for s in lb.states() if s.key[0] == "service:svc/other"]
    assert len(other) == 1 and other[0] in held.states  # the instance that stayed keeps its state
    assert [s.failures for s in lb.states() if s.key[0] == "service:unrelated/u"] == [5]  # not a changed service


# --- ejection cap and concurrency cap

@pytest.mark.parametrize(("n", "share", "cap"), [(1, 0.5, 0), (2, 0.5, 1), (3, 0.5, 1), (4, 0.5, 2), (10, 0.1, 1),
                                                 (10, 0.0, 1), (5, 1.0, 5)])
def test_ejection_cap(n: int, share: float, cap: int) -> None:
    assert EjectPolicy(max_share=share).cap(n) == cap


def test_at_most_the_share_is_skipped_and_traffic_still_flows_when_all_are_bad() -> None:
    lb = Balancer("p2c", policy=EjectPolicy(failures=1, duration=10.0, max_share=0.5))
    cmds = {"svc": [_add("svc", "/x", f"http://10.0.0.{i}:80/", f"i{i}") for i in range(4)]}
    p = lb.picker(TableBuilder().update(cmds)[0].lookup("", "/x"))
    for k, st in enumerate(p.states):
        lb.try_failed(st, 0.0, float(k), "answered 503")  # all four ejected, at times 0..3
    assert lb.ejections == 4
    picked = {p.pick(5.0) for _ in range(200)}
    assert picked == {0, 1}  # two of four skipped (the two ejected last); the others still get requests


def test_max_inflight_picks_another_then_answers_full() -> None:
    lb = Balancer("rr", max_inflight=2)
    cmds = {"svc": [_add("svc", "/x", f"http://10.0.0.{i}:80/", f"i{i}") for i in range(2)]}
    p = lb.picker(TableBuilder().update(cmds)[0].lookup("", "/x"))
    p.states[0].outstanding = 2
    assert {p.pick(0.0) for _ in range(6)} == {1}
    p.states[1].outstanding = 2
    assert p.pick(0.0) == FULL


def test_rr_with_weights_walks_fabios_ring() -> None:
    """rr with unequal weights gives the same sequence as the table's own smooth weighted ring."""
    route = _canary_route()
    p = Balancer("rr").picker(route)
    assert [p.targets[p.pick(0.0)] for _ in range(40)] == [route.pick("rr") for _ in range(40)]


def test_budgets_of_idle_routes_are_dropped_so_the_dict_stays_bounded() -> None:
    lb = Balancer("p2c")
    lb._budgets_floor = lb._budgets_limit = 4
    tables = []
    for n in range(12):  # twelve different routes, each used once long ago (budgets stamped at second 0)
        cmds = {f"s{n}": [_add(f"s{n}", f"/r{n}", "http://10.0.0.1:80/", f"i{n}")]}
        tables.append(TableBuilder().update(cmds)[0])
        lb.picker(tables[-1].lookup("", f"/r{n}"))
    assert len(lb._budgets) <= 5  # pruned whenever it passed the limit: idle budgets went
    b = RetryBudget()
    b.deposit(100.0)
    assert not b.idle(100.0 + WINDOW - 1) and b.idle(100.0 + WINDOW)


def test_a_cold_instance_gets_one_probe_at_a_time_even_with_a_stuck_request() -> None:
    """An instance that was ejected (cold again) still holding a request that will never end (a POST to a
    stalled process) is probed: a probe is what is counted, not its old requests in flight."""
    lb = Balancer("p2c", decay=1.0)
    cmds = {"svc": [_add("svc", "/x", f"http://10.0.0.{i}:80/", f"i{i}") for i in range(2)]}
    p = lb.picker(TableBuilder().update(cmds)[0].lookup("", "/x"))
    cold, warm = p.states
    cold.outstanding = 1  # stuck
    lb.try_succeeded(warm, 0.005, 10.0)
    picks = [p.pick(10.1) for _ in range(20)]
    assert picks.count(0) == 1  # one probe; then it waits for the probe's answer
    lb.try_succeeded(warm, 0.005, 12.0)  # the other one keeps answering
    assert [p.pick(10.1 + 2.0) for _ in range(3)].count(0) == 1  # a probe as old as 2 decays is given up
    lb.try_succeeded(cold, 0.005, 12.2)  # the probe answered: warm, compared by load from now on
    assert cold.probe_at == 0.0
    assert {p.pick(12.3) for _ in range(50)} == {1}  # compared by load: its stuck request doubles its cost
    cold.outstanding = 0  # the stuck request ends
    lb.try_succeeded(warm, 0.006, 12.2)  # and the other one answers a little slower now
    assert 0 in {p.pick(12.3) for _ in range(50)}


def test_an_abandoned_connect_that_already_ended_is_dealt_with() -> None:
    """A connect dropped after it ended (a hedge race decided meanwhile): its connection is closed, its
    error retrieved (asyncio logged "Task exception was never retrieved" for each one: seen with Docker)."""
    import asyncio

    from router.proxy.attempts import _abandon

    class Conn:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    async def connected() -> Conn:
        return Conn()

    async def refused() -> Conn:
        raise ConnectionRefusedError("refused")

    async def pending() -> Conn:
        await asyncio.sleep(10)
        return Conn()

    async def main() -> tuple[Conn, asyncio.Task, asyncio.Task]:
        ok, bad, slow = (asyncio.ensure_future(c()) for c in (connected, refused, pending))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ok.done() and bad.done() and not slow.done()
        for t in (ok, bad, slow):
            _abandon(t)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return ok.result(), bad, slow

    conn, bad, slow = asyncio.run(main())
    assert conn.aborted
    assert not bad._log_traceback  # retrieved: nothing is logged when it is collected
    assert slow.cancelled()
