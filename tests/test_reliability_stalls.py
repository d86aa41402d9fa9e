"""Issue 17's stall rows with the shipped defaults: every instance stalled, a POST sent to a stalled
instance, and a legitimately slow answer on an otherwise fast route (router/proxy/attempts.py, "Stalls").

The rule under test: an instance that sent no response headers for the stall time (proxy.stall.timeout,
1 s, or 4x the route's latency estimate) while several tries waited on it is stalled; a try still waiting
on it then ends (504, or another instance for an idempotent request). A slow answer from an instance that
answers other requests meanwhile, or a single slow request, is waited for.

Assertions are statuses and counts (at the witness backends, in /metrics), never durations; client
timeouts are generous hang guards, so "no client timeout" means the router answered.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from time import perf_counter

import httpx
import pytest

from bench.faults import Instance, run_row
from router.proxy.attempts import STALL_SAMPLES, Sender, Stalled
from router.proxy.balance import Balancer
from router.proxy.budget import RetryBudget
from router.proxy.instance import STALL_TRIES, InstanceState
from router.proxy.picker import RoutePicker
from tests.backends import Backend
from tests.router_proc import RouterProc

# --- the rule on its own (times are passed in)


@pytest.mark.parametrize(("unanswered", "silent_for", "after", "stalled"), [
    (STALL_TRIES, 1.0, 1.0, True),  # several waited, nothing came back for the stall time
    (STALL_TRIES + 20, 5.0, 1.0, True),
    (STALL_TRIES - 1, 9.0, 1.0, False),  # one or two slow requests are not a stall, however long
    (1, 60.0, 1.0, False),
    (STALL_TRIES, 0.9, 1.0, False),  # not silent long enough
    (STALL_TRIES, 3.0, 8.0, False),  # a route whose answers are slow waits longer
    (0, 60.0, 1.0, False),  # it answered since: nothing is waiting
])
def test_an_instance_is_stalled_only_when_several_tries_met_silence(unanswered: int, silent_for: float,
                                                                   after: float, stalled: bool) -> None:
    st = InstanceState(("service:s/1", "http", "10.0.0.1", 80), "10.0.0.1:80", "s")
    st.unanswered, st.silent_since = unanswered, 100.0
    assert st.stalled(100.0 + silent_for, after) is stalled


class _T:
    def __init__(self, i: int) -> None:
        self.weight, self.source, self.scheme, self.host, self.port = 1.0, f"service:s/{i}", "http", f"10.0.0.{i}", 80
        self.service, self.tls_skip_verify = "s", False


def _picker(n: int = 3) -> tuple[Sender, RoutePicker]:
    lb = Balancer("p2c")
    sender = Sender(None, lb, stall=1.0)  # type: ignore[arg-type]  # no I/O in these tests
    return sender, RoutePicker(lb, [_T(i) for i in range(n)], RetryBudget())


@pytest.mark.parametrize(("answers", "est", "stall", "after"), [
    (0, 0.005, 1.0, 0.0),  # a new route (or table build): no history, no judgement
    (STALL_SAMPLES - 1, 0.005, 1.0, 0.0),
    (STALL_SAMPLES, 0.005, 1.0, 1.0),  # a fast route: the floor
    (STALL_SAMPLES, 2.0, 1.0, 8.0),  # a slow route: 4x its latency estimate
    (1000, 0.005, 0.0, 0.0),  # proxy.stall.timeout=0: off
])
def test_the_stall_time_follows_the_route(answers: int, est: float, stall: float, after: float) -> None:
    sender, p = _picker()
    sender.stall = stall
    p.answers, p.est = answers, est
    assert sender._stall_after(p) == pytest.approx(after)


def test_a_post_is_moved_off_a_stalled_or_failing_instance_while_a_sound_one_exists() -> None:
    sender, p = _picker()
    p.answers = STALL_SAMPLES
    now = 1000.0
    stalled, failing, sound = p.states
    stalled.unanswered, stalled.silent_since = STALL_TRIES + 5, now - 5.0
    failing.fails = 2  # e.g. readmitted after an ejection, no success yet
    for _ in range(50):
        assert sender._sound(p, 0, now) == 2
        assert sender._sound(p, 1, now) == 2
        assert sender._sound(p, 2, now) == 2
    sound.fails = 1  # every instance is as bad: the pick stands (better a slow answer than none)
    assert sender._sound(p, 0, now) == 0
    assert sender._sound(p, 1, now) == 1


def test_no_retry_or_hedge_goes_to_a_stalled_instance_and_after_a_stall_only_to_one_that_answers() -> None:
    sender, p = _picker()
    p.answers = STALL_SAMPLES
    now = 1000.0
    first, quiet, stalled = p.states
    stalled.unanswered, stalled.silent_since = STALL_TRIES, now - 5.0  # known stalled
    quiet.unanswered, quiet.silent_since = 1, now - 0.5  # one try waiting longer than the per-try timeout
    for _ in range(20):
        assert sender._next(p, [0], now) == 1  # a hedge or retry: the stalled one is never picked
        assert sender._next(p, [0], now, answering=True) == -1  # after a stall: neither
    quiet.unanswered = 0  # it answered meanwhile
    assert sender._next(p, [0], now, answering=True) == 1
    sender.stall = 0.0  # proxy.stall.timeout=0: nothing is judged, any instance may be tried
    assert sender._next(p, [0, 1], now) == 2


class _Waiting:
    """Stands in for a Response waiting for its headers: records what the watchdog ended it with."""

    def __init__(self) -> None:
        self.ended: BaseException | None = None

    def give_up(self, exc: BaseException) -> None:
        self.ended = exc


def test_the_watchdog_ends_only_tries_that_waited_their_stall_time_on_a_stalled_instance() -> None:
    async def main() -> None:
        sender, p = _picker()
        now = perf_counter()
        stalled, answered, _ = p.states
        stalled.unanswered, stalled.silent_since = STALL_TRIES + 2, now - 3.0
        old, new = _Waiting(), _Waiting()
        stalled.waiting = {old: (now - 2.0, 1.0), new: (now + 0.9, 1.0)}  # sent 3 s and 0.1 s ago
        answered.unanswered, answered.waiting = 0, {_Waiting(): (now - 2.0, 1.0)}  # it answered since
        sender._suspects = {stalled, answered}
        sender._watch()
        assert isinstance(old.ended, Stalled) and new.ended is None
        assert list(stalled.waiting) == [new]  # still waiting: its own stall time has not passed
        assert sender.lb.stalls == 1 and sender.lb.ejections == 1 and stalled.until > now
        assert sender._suspects == {stalled}  # the one that answered is no longer watched
        assert sender._tick is not None  # ... and the watchdog stays armed for the other
        sender._tick.cancel()

    asyncio.run(main())


# --- end to end, real processes


def test_every_instance_stalled_is_answered_504_within_the_retry_budget(tmp_path: Path) -> None:
    """All three instances accept and read, never answer: the router answers 504 before the client gives
    up (the client's timeout is a 5 s hang guard); retries and hedges stay within the budget."""
    row = run_row("router", "all-stalled", rate=100.0, baseline=2.0, during=3.0, after=1.0, flags=[],
                  tmp=tmp_path, timeout=5.0)
    print(f"all-stalled: {row.requests} requests, outcomes {row.outcomes}, retries {row.retries}, "
          f"hedges {row.hedges}, stalls {row.stalls}, POST at two instances {row.post_twice}")
    assert set(row.outcomes) <= {"200", "504"}, row.outcomes  # no client timeout, no 500
    assert row.outcomes.get("504", 0) > 0
    assert row.stalls and row.stalls > 0
    assert row.post_twice == 0
    assert row.retries is not None and row.retries + (row.hedges or 0) <= 10 * 10 + 0.2 * row.requests


def _post(client: httpx.Client, url: str, rid: str, out: dict[str, tuple[int, str]]) -> None:
    try:
        r = client.post(url, headers={"x-req-id": rid})
        out[rid] = (r.status_code, r.text[:40])
    except httpx.HTTPError as e:
        out[rid] = (0, type(e).__name__)


def test_posts_sent_to_a_stalled_instance_are_answered_504_and_never_sent_twice(tmp_path: Path) -> None:
    """Round robin (so some POSTs surely land on the stalled instance) over a stalled and a healthy
    instance: every POST id reaches exactly one instance (the witnesses), those the stalled one got are
    answered 504, the others 200, and the GETs sent to it meanwhile are answered by the other instance."""
    a, b = Instance("a").start(), Instance("b").start()
    routes = f"route add svc /svc http://127.0.0.1:{a.port}/\nroute add svc /svc http://127.0.0.1:{b.port}/"
    router = RouterProc.static(routes, "-proxy.strategy", "rr").start()
    try:
        with httpx.Client(timeout=10, trust_env=False) as c:
            for _ in range(2 * STALL_SAMPLES):  # the route's history: stalls are judged from here on
                assert c.get(router.url + "/svc").status_code == 200
        a.mode("stall")
        posts: dict[str, tuple[int, str]] = {}
        gets: dict[str, tuple[int, str]] = {}
        with httpx.Client(timeout=10, trust_env=False, limits=httpx.Limits(max_connections=32)) as c:
            threads = [threading.Thread(target=_post, args=(c, router.url + "/svc", f"p{i}", posts)) for i in range(6)]
            threads += [threading.Thread(target=lambda i=i: gets.__setitem__(
                i, (c.get(router.url + "/svc").status_code, ""))) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
        seen_a, seen_b = set(a.seen()), set(b.seen())
        print(f"POSTs {posts}; GETs {gets}; stalled instance got {sorted(seen_a)}, the other {sorted(seen_b)}")
        assert len(posts) == 6 and len(gets) == 4
        assert not seen_a & seen_b  # the witnesses: no POST reached both
        assert seen_a, "no POST went to the stalled instance (round robin should send some there)"
        for rid, (status, _) in posts.items():
            assert status == (504 if rid in seen_a else 200), (rid, status)
            assert rid in seen_a or rid in seen_b
        assert {s for s, _ in gets.values()} == {200}  # hedged to the healthy instance
        metrics = httpx.get(router.ui + "/metrics", timeout=5).text
        assert _counter(metrics, "upstream_stalls") >= len(seen_a)
    finally:
        router.stop()
        a.stop()
        b.stop()


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"consul_router_{name}_total ") or line.startswith(f"consul_router_{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_slow_answer_on_a_fast_route_is_waited_for() -> None:
    """A 3 s answer on a route whose other answers take milliseconds: the instance keeps answering the
    other requests, so it is not stalled, and the slow GET and POST are answered 200 (the GET is also
    sent to a second instance after the per-try timeout, which is just as slow). On a quiet route (no
    other traffic, so nothing to tell a stall from a slow answer) a lone slow POST is waited for too."""
    busy = [Backend(f"b{i}").start() for i in range(3)]
    quiet = [Backend(f"q{i}").start() for i in range(2)]
    routes = "\n".join([f"route add busy /busy http://127.0.0.1:{b.port}/" for b in busy]
                       + [f"route add quiet /quiet http://127.0.0.1:{q.port}/" for q in quiet])
    router = RouterProc.static(routes).start()
    stop = threading.Event()
    background: list[int] = []

    def load() -> None:
        with httpx.Client(timeout=10, trust_env=False) as c:
            while not stop.wait(0.02):
                background.append(c.get(router.url + "/busy").status_code)

    try:
        with httpx.Client(timeout=10, trust_env=False) as c:
            for _ in range(2 * STALL_SAMPLES):
                assert c.get(router.url + "/busy").status_code == 200
                assert c.get(router.url + "/quiet").status_code == 200
        loader = threading.Thread(target=load)
        loader.start()
        results: dict[str, int] = {}

        def slow(name: str, method: str, url: str) -> None:
            with httpx.Client(timeout=20, trust_env=False) as c:
                results[name] = c.request(method, router.url + url).status_code

        threads = [threading.Thread(target=slow, args=("busy GET", "GET", "/busy/slow?s=3")),
                   threading.Thread(target=slow, args=("busy POST", "POST", "/busy/slow?s=3")),
                   threading.Thread(target=slow, args=("quiet POST", "POST", "/quiet/slow?s=3"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stop.set()
        loader.join(15)
        print(f"slow requests {results}; background {len(background)} requests")
        assert results == {"busy GET": 200, "busy POST": 200, "quiet POST": 200}
        assert background and set(background) == {200}
        slow_posts = [r for b in busy + quiet for r in b.requests if r.method == "POST"]
        assert len(slow_posts) == 2  # each POST reached one instance
        slow_gets = [r for b in busy for r in b.requests if r.method == "GET" and "slow" in r.path]
        assert 1 <= len(slow_gets) <= 2  # the GET: at most one hedge
        metrics = httpx.get(router.ui + "/metrics", timeout=5).text
        assert _counter(metrics, "upstream_stalls") == 0
    finally:
        stop.set()
        router.stop()
        for b in busy + quiet:
            b.stop()
