"""Per-service re-reads: the services whose fingerprints changed are read with `/v1/health/service/<name>`,
each at once beside the others, and their new commands are handed to the table (docs/discovery.md).

It used to re-read in batches: a change seen while a batch was in flight waited for the whole batch (its
slowest read) before its own read started, which doubled the delay of a burst of changes (issue 18). A
service that changes again while it is being read is read once more after. Results that arrive in the
same event-loop turn go to the table in one swap. A failed read keeps the service's last routes and is
retried after a pause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from registry.consul.api import Backoff, ConsulAPI, ConsulError
from registry.consul.fingerprints import nonpassing_of
from registry.consul.hot import HOT_LIMIT, HOT_WAIT, HotWatches
from registry.consul.services import ServiceRoutes
from registry.consul.status import RegistryStatus, Sink
from router.table.routecmd import RouteCmd

Entries = list[dict[str, Any]]

# How long a change a hot watch is expected to bring may wait for it before the service is re-read anyway.
# Both answers come from the same commit (a node check moves the service's index too: measured on Consul
# 1.8.7), and a watch that errors retries with the same index, which then answers at once; a watch that is
# stopped is read at once (`_dropped`). So this bound is a safety net only: with a short one (50 ms), under
# the burst on the loaded machine Consul's hot answers came later than that and the fallbacks doubled the
# requests (46 re-reads for 50 changes), which slowed Consul's answers further.
HOT_GRACE = 1.0


def _check_key(c: dict[str, Any]) -> tuple[str, str, str]:
    """A health check's identity in Consul: node, service instance, check ID."""
    return c.get("Node", ""), c.get("ServiceID", ""), c.get("CheckID", "")


class ReReads:
    """The queue of services to re-read, the reads in flight, and what the table was last given."""

    def __init__(self, api: ConsulAPI, status: RegistryStatus, sink: Sink, routes: ServiceRoutes, *,
                 learn: Callable[[str, Entries], None], concurrency: int = 16, hot_limit: int = HOT_LIMIT,
                 max_rate: float = 20.0) -> None:
        self.api = api
        self.status = status
        self.sink = sink
        self.routes = routes
        self.learn = learn  # a read told which nodes the service is on (the watcher's node map)
        self.concurrency = concurrency
        self.wake = asyncio.Event()  # set when there is work for `run`
        self.pending: set[str] = set()
        self.since: dict[str, float] = {}  # pending service -> monotonic time the change was first seen
        self.sent: dict[str, list[RouteCmd]] = {}  # the commands the table has per service (see emit)
        self._inflight: dict[str, float | None] = {}  # service being re-read -> when its change was seen
        self._ready: dict[str, list[RouteCmd] | None] = {}  # re-read results not yet handed to the table
        self._ready_since: float | None = None
        self._backoff = Backoff()
        self._svc_index: dict[str, int] = {}  # service -> the per-service Consul index of the state applied
        # service -> (index, non-passing checks, since) of a health answer its hot watch is to bring (enqueue)
        self._expect: dict[str, tuple[int, frozenset, float]] = {}
        self._health: dict[str, frozenset] = {}  # service -> the non-passing checks of the entries applied
        self._entries: dict[str, Entries] = {}  # hot service -> the entries applied (`_fail_now`)
        self.hot = HotWatches(api, self._accept, limit=hot_limit, wait=min(HOT_WAIT, api.wait), max_rate=max_rate,
                              count=self._count, on_drop=self._dropped)
        status.hot = self.hot.counts

    def _count(self) -> None:
        self.status.requests += 1

    def forget_indexes(self) -> None:
        """Consul may have come back with other data: per-service indexes no longer compare."""
        self._svc_index.clear()
        self._health.clear()
        self._entries.clear()
        self.hot.clear()  # every expected change is read now (`_dropped`)

    def enqueue(self, names: set[str], since: float | None = None, index: int | None = None,
                health: Mapping[str, frozenset] | None = None, checks: list[dict[str, Any]] | None = None) -> None:
        """Mark services for a re-read; `since` (default: now) is when the change that needs it was seen.

        `index` and `health`: the X-Consul-Index of the health answer that showed the change and the
        services' non-passing checks in it (fingerprints.py). A hot watch (hot.py) answers for the same
        commit as the health watches, with the whole entries, so a re-read would mostly be a second request
        for an answer already here or on its way:

        * a service whose applied entries show the same non-passing checks, or were applied at that index or
          later (Consul's indexes are its Raft log positions, applied in order), needs no read;
        * one whose hot watch waits on an index below the answer's is answered by that watch, woken by the
          same commit; it gets HOT_GRACE to bring entries that show those checks (or that index), and is
          read as any other if it does not.

        `checks`: the health answers' non-passing checks; a hot service one of them shows failing since its
        entries were applied loses that instance's routes at once (`_fail_now`), before its hot watch answers.
        """
        if index is not None and health is not None and names:
            if checks:
                self._fail_now(names, checks, since)
            names = {n for n in names if not self._covered(n, index, health.get(n, frozenset()), since)}
        if names:
            at = time.monotonic() if since is None else since
            for n in names:
                if n not in self.since or at < self.since[n]:
                    self.since[n] = at
            self.pending |= names
            self.wake.set()

    def _fail_now(self, names: set[str], checks: list[dict[str, Any]], since: float | None) -> None:
        """Remove at once the routes of hot services' instances that a health answer shows failing.

        A check in the critical (or warning) answer is in that state at its ModifyIndex: positive evidence,
        from the same commit the service's hot watch will answer for, and Consul often answers the state
        watches first (bench/rolling_trace.py, docs/benchmarks.md). So for a hot service whose applied
        entries have such a check in another state, and were applied at an index below the check's
        ModifyIndex (an older listing says nothing new), the entries are patched with the answer's checks
        and rebuilt by the same rules (the hold for checks that have not run included). Only a result that
        removes routes and adds none is applied: a check that left the non-passing answers may have passed
        or been deregistered, which only the service's own answer tells apart, and a move between warning
        and critical is left to it too. The hot watch's answer still comes and replaces the patched
        entries; an answer older than the failure (a re-read already in flight) is dropped by the
        per-service index, which is raised to the newest check applied."""
        wanted = [n for n in names if n in self._entries and self.hot.watching(n)]
        if not wanted:
            return
        by_key = {_check_key(c): c for c in checks}
        for name in wanted:
            floor = self._svc_index.get(name, 0)
            newest = 0
            patched: Entries = []
            for e in self._entries[name]:
                cs = e.get("Checks") or []
                new: list[dict[str, Any]] | None = None
                for i, c in enumerate(cs):
                    ev = by_key.get(_check_key(c))
                    if ev is None or (ev.get("ModifyIndex") or 0) <= floor or ev.get("Status") == c.get("Status"):
                        continue
                    if new is None:
                        new = list(cs)
                    new[i] = ev
                    newest = max(newest, ev.get("ModifyIndex") or 0)
                patched.append(e if new is None else {**e, "Checks": new})
            if not newest:
                continue
            built = self.routes.preview(name, patched)
            cmds, sent = built.cmds or [], self.sent.get(name) or []
            if cmds == sent or not set(cmds) <= set(sent):
                continue
            self.routes.adopt(name, built)
            self._svc_index[name] = newest
            self._health[name] = nonpassing_of(patched)
            self._entries[name] = patched
            self.status.failed_now += 1
            self._ready_cmds(name, built.cmds, time.monotonic() if since is None else since)

    def _covered(self, name: str, index: int, health: frozenset, since: float | None) -> bool:
        """Whether the change `name` shows in a health answer is (or is about to be) applied without a re-read."""
        if self._svc_index.get(name, 0) >= index or self._health.get(name) == health:
            self.status.covered += 1
            return True
        parked = self.hot.parked(name)
        if parked is None or parked >= index or name in self.pending or name in self._inflight:
            return False
        at = time.monotonic() if since is None else since
        prev = self._expect.get(name)
        self._expect[name] = (index, health, at if prev is None else min(at, prev[2]))
        if prev is None or prev[0] < index:
            asyncio.get_running_loop().call_later(HOT_GRACE, self._expired, name, index)
        self.status.covered += 1
        return True

    def _dropped(self, name: str) -> None:
        """`name`'s hot watch was stopped: a change it was to bring is read now."""
        exp = self._expect.pop(name, None)
        if exp is not None:
            self.enqueue({name}, exp[2])

    def _expired(self, name: str, index: int) -> None:
        """The hot watch did not bring the change at `index` in time: read the service."""
        exp = self._expect.get(name)
        if exp is not None and exp[0] == index:
            del self._expect[name]
            self.enqueue({name}, exp[2])

    def emit(self, changes: dict[str, list[RouteCmd] | None], manual: list[RouteCmd] | None, since: float | None) -> None:
        """Hand a change to the table and record how long it took from the watch answer to the swap.

        Services whose commands equal what the table has are left out, and a change that leaves nothing
        is no swap: an instance reconcile re-reads every service it cannot rule out, and timing those
        no-op re-reads against the reconcile's trigger reported seconds for changes applied in ms.
        """
        sent = self.sent
        changes = {n: c for n, c in changes.items() if sent.get(n) != c}
        if not changes and manual is None:
            return
        self.sink(changes, manual)
        for n, c in changes.items():
            if c is None:
                sent.pop(n, None)
            else:
                sent[n] = c
        if since is not None:
            self.status.propagated((time.monotonic() - since) * 1000)

    async def run(self, on_wake: Callable[[], None]) -> None:
        """Forever: on each wake call `on_wake` (the watcher starts a reconcile there), then start a read
        for every pending service not already being read."""
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Future[None]] = set()
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                on_wake()
                for name in sorted(self.pending - self._inflight.keys()):
                    self.pending.discard(name)
                    self._inflight[name] = self.since.pop(name, None)
                    task = asyncio.ensure_future(self._read_one(name, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()
            self.hot.clear()

    async def _read_one(self, name: str, sem: asyncio.Semaphore) -> None:
        """One service's re-read; its result waits in `_ready` for the next `_flush` (scheduled once per turn)."""
        since = self._inflight.get(name)
        try:
            async with sem:
                entries, index = await self.read(name)
        except ConsulError as e:
            self.status.error(f"service {name}: {e}")
            # retried after a pause, keeping the time of its change; new changes meanwhile read at once
            asyncio.get_running_loop().call_later(self._backoff.next(), self.enqueue, {name}, since)
            return
        finally:
            self._inflight.pop(name, None)
            if name in self.pending:  # changed again while being read: read it again
                self.wake.set()
        self._backoff.reset()
        self.hot.touch(name, index)
        self._accept(name, entries, index, since)

    def _accept(self, name: str, entries: Entries, index: int, since: float | None) -> None:
        """One service's entries, from a re-read or its hot watch (hot.py): applied unless an answer with a
        higher per-service index already was (the two may cross); the result waits in `_ready` for `_flush`."""
        if index < self._svc_index.get(name, 0):
            return
        self._svc_index[name] = index
        health = self._health[name] = nonpassing_of(entries)
        exp = self._expect.get(name)
        if exp is not None and (index >= exp[0] or health == exp[1]):  # what a health answer showed (enqueue)
            del self._expect[name]
            since = exp[2] if since is None else min(since, exp[2])
        self.learn(name, entries)
        if self.hot.watching(name):
            self._entries[name] = entries
            if len(self._entries) > 2 * max(self.hot.limit, 1):  # hot watches that ended since
                self._entries = {n: es for n, es in self._entries.items() if self.hot.watching(n)}
        else:
            self._entries.pop(name, None)
        self._ready_cmds(name, self.routes.commands(name, entries), since)

    def _ready_cmds(self, name: str, cmds: list[RouteCmd] | None, since: float | None) -> None:
        """`name`'s new commands wait in `_ready` for `_flush`, once per event-loop turn."""
        if not self._ready:
            asyncio.get_running_loop().call_soon(self._flush)
        self._ready[name] = cmds
        if since is not None:
            self._ready_since = since if self._ready_since is None else min(since, self._ready_since)

    def _flush(self) -> None:
        changes, self._ready = self._ready, {}
        since, self._ready_since = self._ready_since, None
        if changes:
            self.emit(changes, None, since)

    async def collect(self) -> tuple[dict[str, list[RouteCmd] | None], set[str]]:
        """Re-read every pending service at once (the initial load without the dump); return their new
        commands. Failed reads stay pending."""
        self.wake.clear()
        names, self.pending = self.pending, set()
        sem = asyncio.Semaphore(self.concurrency)
        changes: dict[str, list[RouteCmd] | None] = {}
        failed: set[str] = set()

        async def one(name: str) -> None:
            async with sem:
                try:
                    entries, index = await self.read(name)
                except ConsulError as e:
                    failed.add(name)
                    self.status.error(f"service {name}: {e}")
                    return
            self._svc_index[name] = index
            self.learn(name, entries)
            changes[name] = self.routes.commands(name, entries)

        await asyncio.gather(*(one(n) for n in sorted(names)))
        if failed:
            self.pending |= failed
            self.wake.set()
        return changes, failed

    async def read(self, name: str) -> tuple[Entries, int]:
        """`/v1/health/service/<name>`: its entries and its X-Consul-Index (the service's own index)."""
        r = await self.api.get(f"/v1/health/service/{name}")
        self.status.requests += 1
        return (r.body if r.status == 200 and r.body else []), r.index
