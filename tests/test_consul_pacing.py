"""The watch loops' pacing (registry/consul/pacing.py) on a fake clock: real changes are never delayed,
answers without news are held to `maxrate`/s after a burst of 2 (Consul's blocking-query guidance)."""

from __future__ import annotations

import pytest

from registry.consul.pacing import CHANGE_FACTOR, Bucket, WatchPacer


def drive(pacer: WatchPacer, indexes: list[int], gap: float, start: float = 0.0) -> list[float]:
    """Feed answers `gap` seconds apart (plus any wait the pacer asked for); return the waits."""
    now, waits = start, []
    for i in indexes:
        w = pacer.after(i, now)
        waits.append(w)
        now += gap + w
    return waits


def test_bucket_burst_then_rate() -> None:
    b = Bucket(rate=10, burst=2, now=0.0)
    assert [b.take(0.0), b.take(0.0)] == [0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.1)
    assert b.take(1.0) == 0.0  # refilled (capped at the burst)


@pytest.mark.parametrize(
    ("case", "indexes", "gap", "expect_waits"),
    [
        # the case: three real changes within a few ms; the old bucket made the third wait 50 ms
        ("three quick changes", [101, 102, 103], 0.001, [0.0, 0.0, 0.0]),
        # 50 changes in 100 ms (the burst benchmark): none waits
        ("burst of 50", list(range(101, 151)), 0.002, [0.0] * 50),
        # the index does not move and answers come back at once: after 2, one every 1/20 s
        ("stuck index", [100] * 5, 0.0, [0.0, 0.0, 0.05, 0.05, 0.05]),
        # Consul rewritten to answer index 0 (or a proxy dropping the header)
        ("index zero", [0] * 4, 0.0, [0.0, 0.0, 0.05, 0.05]),
    ],
)
def test_pacing_table(case: str, indexes: list[int], gap: float, expect_waits: list[float]) -> None:
    waits = drive(WatchPacer(20, now=0.0, index=100), indexes, gap)
    assert waits == pytest.approx(expect_waits, abs=1e-9), case


def test_low_constant_index_stays_on_the_slow_bucket() -> None:
    """Index rewritten to 3 while the watch was at 100: backwards (reset read from 0), then 3 again and
    again. Neither the drop nor the repeats are news, so the loop runs at maxrate, not faster."""
    p = WatchPacer(20, now=0.0, index=100)
    waits = drive(p, [3] * 42, 0.0)
    elapsed = sum(waits)
    assert p.paced == 40
    assert elapsed == pytest.approx(40 / 20)  # on the fake clock: 40 paced answers at 20/s after the burst of 2


def test_backwards_index_becomes_the_new_base() -> None:
    """A dev agent restarted (indexes count from ~10 again): the drop is paced, the next real change is not."""
    p = WatchPacer(20, now=0.0, index=5000)
    p.after(12, 0.0)
    p.after(12, 0.0)
    assert p.after(12, 0.0) > 0  # no news
    assert p.after(13, 0.0) == 0.0  # news below the old 5000 is still news


def test_an_index_moving_on_every_read_is_bounded_too() -> None:
    """A faulty relay inventing a higher index on every answer, at once: paced at CHANGE_FACTOR x maxrate."""
    p = WatchPacer(20, now=0.0, index=1)
    n = 2000
    waits = drive(p, list(range(2, 2 + n)), 0.0)
    assert waits[: 20 * CHANGE_FACTOR] == [0.0] * (20 * CHANGE_FACTOR)  # the news burst
    rate = n / sum(waits)
    assert rate <= 20 * CHANGE_FACTOR * 1.12


def test_error_answers_spend_nothing() -> None:
    p = WatchPacer(20, now=0.0, index=100)
    assert [p.after(None, 0.0) for _ in range(10)] == [0.0] * 10
    assert p.after(100, 0.0) == 0.0 and p.after(100, 0.0) == 0.0  # the quiet burst is still whole


def test_idle_timeouts_never_wait() -> None:
    """An idle blocking query returns after `wait` with the same index: one token per minute, never short."""
    p = WatchPacer(20, now=0.0, index=100)
    assert drive(p, [100] * 10, 60.0) == [0.0] * 10


# ---------------------------------------------------------------- against a real agent


async def _watch_for(api, seconds: float, during=None, **kw):  # type: ignore[no-untyped-def]
    """Run a real ConsulWatcher for `seconds` after its initial sync; `during(watcher)` runs meanwhile (in
    a thread: python-consul2 is synchronous)."""
    import asyncio

    from registry.consul.watcher import ConsulWatcher

    applied: list[dict] = []
    w = ConsulWatcher(api, lambda changes, manual: applied.append(changes), resync=0, **kw)
    task = asyncio.ensure_future(w.run())
    try:
        while not w.status.ready:
            await asyncio.sleep(0.01)
        if during is not None:
            await asyncio.get_running_loop().run_in_executor(None, during, w)
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        await api.close()
    return w, applied


@pytest.mark.consul
def test_a_quick_sequence_of_real_changes_is_never_paced(fresh_consul) -> None:
    """Eight check changes back to back (the old bucket held the third for 50 ms): no watch answer is
    paced, and the last state is what the table got."""
    import asyncio

    from registry.consul.api import ConsulAPI
    from tests.consul_helpers import make_client, register, set_check

    c = make_client(fresh_consul.port)
    register(c, "quick", "quick-1", 9, tags=["urlprefix-/quick"], status="critical")

    def flips(w) -> None:  # type: ignore[no-untyped-def]
        for k in range(8):
            set_check(c, "quick-1", "passing" if k % 2 == 0 else "critical")

    w, applied = asyncio.run(_watch_for(ConsulAPI(fresh_consul.addr), 1.0, flips))
    assert w.status.paced == 0
    assert w.status.requests > 8  # it did see the changes
    assert applied[-1].get("quick") is None  # the last flip (k=7) left it critical: no route


@pytest.mark.consul
def test_no_busy_loop_when_the_index_does_not_move(fresh_consul) -> None:
    """`wait=5ms`: every blocking query comes back at once with the same index. The four watches then
    read at `maxrate` each (after their burst of 2), not as fast as Consul answers."""
    import asyncio
    import time

    from registry.consul.api import ConsulAPI

    rate, seconds = 5.0, 2.0
    t0 = time.monotonic()
    w, _ = asyncio.run(_watch_for(ConsulAPI(fresh_consul.addr, wait=0.005), seconds, max_rate=rate))
    elapsed = time.monotonic() - t0
    startup = 6  # agent/self, the two states, catalog, kv, the dump
    bound = startup + 4 * (2 + rate * elapsed)
    assert w.status.paced > 0
    assert w.status.dumps == 1  # answers without news start no instance dump
    assert w.status.requests <= bound, f"{w.status.requests} requests in {elapsed:.1f}s (bound {bound:.0f})"


def test_loops_sharing_a_quiet_bucket_share_its_rate() -> None:
    """The hot-service watches (registry/consul/hot.py) share one no-news bucket: ten loops answered at
    once with a stuck index get maxrate reads per second between them, not ten times that; news stays free."""
    shared = Bucket(rate=20, burst=2, now=0.0)
    loops = [WatchPacer(20, now=0.0, index=100, quiet=shared) for _ in range(10)]
    waits = [p.after(100, 0.0) for p in loops]
    assert waits[:2] == [0.0, 0.0] and all(w > 0 for w in waits[2:])
    assert waits[-1] == pytest.approx(8 / 20)  # the 10th no-news answer waits for the 8th token after the burst
    assert [p.after(101, 0.0) for p in loops] == [0.0] * 10  # real changes are not held by the shared bucket


def test_a_shared_quiet_bucket_bounds_several_loops_together() -> None:
    """The hot-service watches share one no-news bucket: 32 stuck loops still read at maxrate in total."""
    shared = Bucket(20, 2, 0.0)
    pacers = [WatchPacer(20, now=0.0, index=100, quiet=shared) for _ in range(32)]
    waits = [p.after(100, 0.0) for p in pacers]  # every loop's answer without news, at the same moment
    assert waits[:2] == [0.0, 0.0]  # the shared burst of 2
    assert waits[-1] == pytest.approx(30 / 20)  # the 32nd waits for 30 tokens at 20/s
    assert [p.after(101, 0.0) for p in pacers] == [0.0] * 32  # news is still never held
