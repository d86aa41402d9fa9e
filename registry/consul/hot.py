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

# 64: a burst of 50 changes (issue 18) stays hot as a whole. Consul allows 200 HTTP connections per client
# address by default; the router holds these, 16 re-reads, 5 watches and its self-registration at most.
HOT_LIMIT = 64
HOT_TTL = 60.0


class HotWatches:
    """At most `limit` per-service blocking watches, each ending `ttl` s after its service last changed."""

    def __init__(self, api: ConsulAPI, on_answer: OnAnswer, *, limit: int = HOT_LIMIT, ttl: float = HOT_TTL,
                 max_rate: float = 20.0, count: Callable[[], None] = lambda: None,
                 on_drop: Callable[[str], None] = lambda name: None) -> None:
        self.api = api
        self.on_answer = on_answer
        self.limit = limit
        self.ttl = ttl
        self.max_rate = max_rate
        self.count = count  # called once per request (the watcher's registry.requests)
        self.on_drop = on_drop  # a watch was stopped (evicted, cleared): a change it was to bring must be read
        self._tasks: dict[str, asyncio.Future[None]] = {}
        self._parked: dict[str, int] = {}  # name -> the index its blocking read waits on, while it waits
        self._changed: dict[str, float] = {}  # name -> monotonic time of its last change
        # one no-news bucket for all hot watches: with an index that never moves (a broken proxy, a
        # restored snapshot) they answer at once, and `limit` buckets would allow `limit` x maxrate reads
        self._quiet = Bucket(max_rate, QUIET_BURST, time.monotonic())

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> set[str]:
        return set(self._tasks)

    def watching(self, name: str) -> bool:
        """Whether `name` has a watch running (its answers keep coming)."""
        task = self._tasks.get(name)
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
        while len(self._tasks) >= self.limit:
            coldest = min(self._tasks, key=lambda n: self._changed.get(n, 0.0))
            self._stop(coldest)
        self._tasks[name] = asyncio.ensure_future(self._watch(name, index))

    def _stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self._changed.pop(name, None)
        self._parked.pop(name, None)
        self.on_drop(name)

    def clear(self) -> None:
        """Consul's data may have been replaced (index went backwards): the indexes held here mean nothing."""
        for name in list(self._tasks):
            self._stop(name)

    async def _watch(self, name: str, index: int) -> None:
        pacer = WatchPacer(self.max_rate, time.monotonic(), index, quiet=self._quiet)
        backoff = Backoff()
        delay = 0.0
        try:
            while time.monotonic() - self._changed.get(name, 0.0) < self.ttl:
                if delay > 0:
                    await asyncio.sleep(delay)
                    delay = 0.0
                self._parked[name] = index
                try:
                    r = await self.api.get(f"/v1/health/service/{name}", index=index)
                except ConsulError as e:
                    self._parked.pop(name, None)
                    self.count()
                    log.debug("hot watch %s: %s", name, e)
                    await asyncio.sleep(backoff.next())
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
            if self._tasks.get(name) is asyncio.current_task():
                self._parked.pop(name, None)
                self._tasks.pop(name, None)
                self._changed.pop(name, None)
