"""Blocking watches on the services that changed recently, so their next changes need no instance dump.

Some changes show in none of the four bulk watches: an instance deregistered while passing, a new
instance registered already passing, an address or port moved, all with the service's tag union unchanged.
Only the instance reconcile (`/v1/internal/ui/nodes`, O(instances): 36 MB and seconds at 30,000 instances)
sees them, and Consul 1.8 has no cheaper bulk answer to "which services changed". But such changes come in
runs: a rolling deploy, a node drain, Registrator replacing a container touch the same service again and
again within seconds. So every service re-read after a change gets a blocking query of its own on
`/v1/health/service/<name>` (its index is the service's own: it wakes only for that service) for `ttl`
seconds after its last change, at most `limit` services at a time (least recently changed dropped first:
Consul allows 200 connections per client address by default). A change to a hot service then costs one
answer and reaches the table in milliseconds; the reconcile still runs and finds it already applied.

The answers go to `on_answer(name, entries, index, answered_at)`; the watcher orders them against its own
re-reads by the per-service index (registry/consul/watcher.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from registry.consul.api import Backoff, ConsulAPI, ConsulError, next_index
from registry.consul.pacing import QUIET_BURST, Bucket, WatchPacer

log = logging.getLogger("registry.consul")

OnAnswer = Callable[[str, list[dict[str, Any]], int, float], None]

# 64 (registry.consul.hotwatches): a burst of 50 changes (issue 18) stays hot as a whole. Consul allows 200
# HTTP connections per client address by default. The router holds at most twice this many here (HotWatches'
# slots: 149 in all at 100,000 instances with bursts), 16 re-reads, 5 watches, the dump helper's read, its
# self-registration and up to 16 idle keep-alive connections. With 80 slots it held 101; within bursts of
# new services every slot is taken, and fewer make a service that changes then wait more often.
HOT_LIMIT = 64
HOT_TTL = 60.0
# A hot watch's blocking queries wait 10 s, not registry.consul.wait (60 s by default). Consul 1.8 holds a
# blocking query, and its place in the per-client connection limit, until its wait ends, even after the
# client closed the connection: at 100,000 instances with bursts of new services every few seconds, watches
# cancelled on eviction kept up to 161 such connections in CLOSE-WAIT at Consul, and the re-reads that came
# after them were refused ("connection closed before the request was written"), some changes never routed
# (docs/benchmarks.md, sixth session). An idle hot watch asks again every 10 s for at most HOT_TTL: at
# most 6 more requests per hot service, and a watch given up frees its place within 10 s.
HOT_WAIT = 10.0


class HotWatches:
    """At most `limit` per-service blocking watches, each ending `ttl` s after its service last changed,
    and at most `slots` of their queries at Consul, counting those of watches given up.

    A watch evicted for a more recently changed service while its query is out at Consul is not cancelled:
    Consul would keep that query's connection until its wait ends anyway (see HOT_WAIT). It retires: its
    answer is still applied (a real state of the service), it asks no more, and it keeps its slot until
    then. A service that changes while every slot is taken waits (the `limit` most recent ones) and gets a
    watch when a slot frees; its changes meanwhile reach the table as any other service's do."""

    def __init__(self, api: ConsulAPI, on_answer: OnAnswer, *, limit: int = HOT_LIMIT, slots: int | None = None,
                 ttl: float = HOT_TTL, wait: float = HOT_WAIT, max_rate: float = 20.0,
                 count: Callable[[], None] = lambda: None, on_drop: Callable[[str], None] = lambda name: None) -> None:
        self.api = api
        self.on_answer = on_answer
        self.limit = limit
        self.slots = 2 * limit if slots is None else slots
        self.ttl = ttl
        self.wait = wait
        self.max_rate = max_rate
        self.count = count  # called once per request (the watcher's registry.requests)
        self.on_drop = on_drop  # a watch was stopped (evicted, cleared): a change it was to bring must be read
        self._tasks: dict[str, asyncio.Future[None]] = {}  # the watches kept going
        self._retiring: dict[str, asyncio.Future[None]] = {}  # evicted, their last query still out
        self._waiting: dict[str, int] = {}  # name -> index, for a slot; the most recently changed last
        self._parked: dict[str, int] = {}  # name -> the index its blocking read waits on, while it waits
        self._changed: dict[str, float] = {}  # name -> monotonic time of its last change
        # one no-news bucket for all hot watches: with an index that never moves (a broken proxy, a
        # restored snapshot) they answer at once, and `limit` buckets would allow `limit` x maxrate reads
        self._quiet = Bucket(max_rate, QUIET_BURST, time.monotonic())

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> set[str]:
        """The services whose watches are kept going."""
        return set(self._tasks)

    def outstanding(self) -> int:
        """The watches that may have a query at Consul: kept going and retiring (at most `slots`)."""
        return len(self._tasks) + len(self._retiring)

    def counts(self) -> dict[str, int]:
        """For /api/status: how many watches are kept going, retiring, waiting for a slot, and the bounds."""
        return {"limit": self.limit, "slots": self.slots, "watching": len(self._tasks),
                "retiring": len(self._retiring), "waiting": len(self._waiting)}

    def waiting(self) -> list[str]:
        """The services waiting for a slot, the most recently changed last."""
        return list(self._waiting)

    def watching(self, name: str) -> bool:
        """Whether `name` has a watch running (its next answer comes; a retiring one's is its last)."""
        task = self._tasks.get(name) or self._retiring.get(name)
        return task is not None and not task.done()

    def parked(self, name: str) -> int | None:
        """The index `name`'s watch is blocked on now (it answers at once for any change of the service
        above it), or None when it is not waiting on Consul (not hot, pacing, backing off)."""
        return self._parked.get(name)

    def touch(self, name: str, index: int) -> None:
        """`name` just changed (its re-read answered `index`): watch it, or keep watching it longer."""
        if self.limit <= 0 or self.ttl <= 0:
            return
        self._changed[name] = time.monotonic()
        task = self._tasks.get(name)
        if task is not None and not task.done():
            return
        task = self._retiring.pop(name, None)
        if task is not None and not task.done():  # evicted, its query still out: it goes on
            self._tasks[name] = task
            self._evict(keep=self.limit)
            return
        self._evict(keep=self.limit - 1)
        if self.outstanding() >= self.slots:
            self._waiting.pop(name, None)
            self._waiting[name] = index
            while len(self._waiting) > self.limit:
                self._forget(next(iter(self._waiting)))
            return
        self._start(name, index)

    def _start(self, name: str, index: int) -> None:
        self._waiting.pop(name, None)
        self._tasks[name] = asyncio.ensure_future(self._watch(name, index))

    def _evict(self, keep: int) -> None:
        """Retire the least recently changed watches until `keep` are kept going."""
        while len(self._tasks) > max(keep, 0):
            coldest = min(self._tasks, key=lambda n: self._changed.get(n, 0.0))
            task = self._tasks.pop(coldest)
            if coldest in self._parked and not task.done():
                self._retiring[coldest] = task
            else:  # pacing or backing off: nothing of it at Consul
                task.cancel()
                self._parked.pop(coldest, None)
                self._forget(coldest)
                self.on_drop(coldest)

    def _forget(self, name: str) -> None:
        self._waiting.pop(name, None)
        if name not in self._tasks and name not in self._retiring:
            self._changed.pop(name, None)

    def _fill(self) -> None:
        """Start watches for the most recently changed services waiting, while there are slots."""
        now = time.monotonic()
        while self._waiting and self.outstanding() < self.slots and len(self._tasks) < self.limit:
            name, index = self._waiting.popitem()
            if now - self._changed.get(name, 0.0) < self.ttl:
                self._start(name, index)
            else:
                self._forget(name)

    def clear(self) -> None:
        """Consul's data may have been replaced (index went backwards): the indexes held here mean nothing."""
        stopped = {**self._retiring, **self._tasks}
        self._tasks.clear()
        self._retiring.clear()
        self._waiting.clear()
        self._parked.clear()
        self._changed.clear()
        for name, task in stopped.items():
            task.cancel()
            self.on_drop(name)

    async def _watch(self, name: str, index: int) -> None:
        me = asyncio.current_task()
        pacer = WatchPacer(self.max_rate, time.monotonic(), index, quiet=self._quiet)
        backoff = Backoff()
        delay = 0.0
        try:
            while self._tasks.get(name) is me and time.monotonic() - self._changed.get(name, 0.0) < self.ttl:
                if delay > 0:
                    await asyncio.sleep(delay)
                    delay = 0.0
                self._parked[name] = index
                try:
                    r = await self.api.get(f"/v1/health/service/{name}", index=index, wait=self.wait)
                except ConsulError as e:
                    self._parked.pop(name, None)
                    self.count()
                    log.debug("hot watch %s: %s", name, e)
                    delay = backoff.next()
                    continue
                self._parked.pop(name, None)
                self.count()
                backoff.reset()
                now = time.monotonic()
                delay = pacer.after(r.index, now)
                if r.index > index:
                    self._changed[name] = now
                    self.on_answer(name, r.body if r.status == 200 and r.body else [], r.index, now)
                index = next_index(index, r.index)
        finally:
            retired = self._retiring.get(name) is me
            if retired or self._tasks.get(name) is me:  # else cancelled by `_evict` or `clear`, which did the rest
                del (self._retiring if retired else self._tasks)[name]
                self._parked.pop(name, None)
                self._forget(name)
                if retired:
                    self.on_drop(name)
                self._fill()
