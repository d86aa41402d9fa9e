"""Watch Consul and tell the router which services' routes changed.

Design (docs/discovery.md): four blocking queries whatever the number of services —
`/v1/health/state/critical` and `/warning` (the non-passing checks: small answers), `/v1/catalog/services` (names,
tags, and the trigger for an instance reconcile) and the override keys in KV. The initial load and each
reconcile read every instance once from `/v1/internal/ui/nodes` (one request, not one per service), which
also catches address/port moves that neither checks nor tags show. Only services whose fingerprint
changed are re-read with `/v1/health/service/<name>`, so the reads per change follow what changed.

Failures never remove routes: a watch that errors backs off (capped, jittered) and keeps its last
answer; a service whose re-read fails keeps its last routes and is retried.

This module holds what ties the parts together (the startup load, what each watch answer means, the
reconcile); the parts with one job each are beside it: watchloop.py (one blocking-query loop), rereads.py
(per-service re-reads and what the table has), fingerprints.py, services.py (entries -> commands),
dumpsource.py (the instance dump), overrides.py (KV) and status.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from registry.consul import bulkload
from registry.consul.api import Backoff, ConsulAPI, ConsulError
from registry.consul.dump import Instances
from registry.consul.dumpsource import DumpSource
from registry.consul.fingerprints import NONPASSING_STATES, health_fingerprints, nonpassing_fingerprints
from registry.consul.health import UNRUN_HOLD
from registry.consul.hot import HOT_LIMIT
from registry.consul.overrides import Overrides
from registry.consul.rereads import ReReads
from registry.consul.services import ServiceRoutes
from registry.consul.status import RegistryStatus, ServiceStatus, Sink
from registry.consul.watchloop import Handler, WatchLoops
from router.table.routecmd import RouteCmd

__all__ = ["ConsulWatcher", "RegistryStatus", "ServiceStatus", "Sink"]  # the status types live in status.py

log = logging.getLogger("registry.consul")

RETRY_MIN = 0.1  # the first wait after a failed initial sync, and the floor of registry.retry (0 would spin)


class ConsulWatcher:
    """Runs the watch loops and feeds the router's table through `sink`."""

    def __init__(
        self,
        api: ConsulAPI,
        sink: Sink,
        *,
        tagprefix: str = "urlprefix-",
        kvpath: str = "/fabio/config",
        statuses: tuple[str, ...] = ("passing",),
        checks_all: bool = False,
        max_rate: float = 20.0,
        status: RegistryStatus | None = None,
        fetch_concurrency: int = 16,
        resync: float = 60.0,
        unrun_hold: float = UNRUN_HOLD,
        hot_limit: int = HOT_LIMIT,
        retry: float = 3.0,
    ) -> None:
        self.api = api
        # registry.retry: the longest wait between two tries of the initial sync (fabio retries at that interval;
        # we start at 0.1 s and double up to it, so a Consul that comes up late is noticed within it)
        self.retry = max(retry, RETRY_MIN)
        self.sink = sink
        self.prefix = tagprefix
        self.kvpath = kvpath.strip("/")
        self.max_rate = max_rate
        self.status = status or RegistryStatus(addr=api.base_url)
        self._routes = ServiceRoutes(self.status, lambda names: self._enqueue(names), prefix=tagprefix, statuses=statuses,
                                     checks_all=checks_all, unrun_hold=unrun_hold)
        self._overrides = Overrides(self.status)
        self._loops = WatchLoops(api, self.status, max_rate, on_error=self._forget_indexes,
                                 on_backwards=self._data_replaced)
        self._rereads = ReReads(api, self.status, sink, self._routes, learn=self._learn_nodes,
                                concurrency=fetch_concurrency, hot_limit=hot_limit, max_rate=max_rate)
        self._health_fp: dict[str, frozenset] = {}
        self._catalog_tags: dict[str, tuple[str, ...]] = {}
        self._catalog_raw: dict[str, list[str]] = {}  # the last /v1/catalog/services answer
        self._instance_fp: dict[str, bytes] = {}
        self._dumps = DumpSource(api, self.status, tagprefix)
        self._reconcile = False  # the catalog index moved: compare instances (address/port) in bulk
        self._reconcile_since: float | None = None  # the answer that asked for the pending reconcile
        self._node_services: dict[str, set[str]] = {}
        self._tagged: set[str] = set()  # the two maps' keys, kept once per change instead of per health answer
        self._last_health: list[dict[str, Any]] = []
        self._by_state: dict[str, list[dict[str, Any]]] = {st: [] for st in NONPASSING_STATES}
        self.resync = resync
        self._wake = self._rereads.wake
        self._reconciler: asyncio.Future[None] | None = None
        self._reconcile_backoff = Backoff()

    @property
    def _dump_ok(self) -> bool:
        """False when /v1/internal/ui/nodes is unavailable: a reconcile re-reads every service."""
        return self._dumps.ok

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Initial full sync (retried until Consul answers), then the watch loops, forever."""
        with bulkload.gc_paused():  # the load's objects hold no cycles (bulkload.gc_paused)
            indexes = await self._initial_sync()
            self.after_load()
        watch = self._loops.run
        if self._dump_ok:
            health = [watch(state, f"/v1/health/state/{state}", indexes[state], self._answer(self._health_handler(state)))
                      for state in NONPASSING_STATES]
        else:
            health = [watch("any", "/v1/health/state/any", indexes["any"], self._answer(self._on_health))]
        try:
            await asyncio.gather(
                *health,
                self._resync_loop(),
                watch("catalog", "/v1/catalog/services", indexes["catalog"],
                      lambda r, news: self._after_answer(self._on_catalog(r.body if r.status == 200 else {}, moved=news))),
                watch("kv", f"/v1/kv/{self.kvpath}", indexes["kv"], lambda r, news: self._after_answer(self._on_kv(r)),
                      params={"recurse": ""}),
                self._rereads.run(self._start_reconcile),
            )
        finally:
            if self._reconciler is not None:
                self._reconciler.cancel()

    @staticmethod
    def after_load() -> None:
        """Move the initial load's long-lived objects (instances, fingerprints, the table) out of the
        cyclic GC's way, so later changes do not rescan them: `gc.freeze()`, while the GC is still paused.

        Not `gc.collect()` first, as before: at 100,000 instances that walked every object of the load
        (millions) to find 0-5 unreachable ones, 3.4-4.5 s on the shared machine during which the event
        loop (the UI's /health, with one worker the proxy) answered nothing (bench/startup_load.py,
        `gc_s`; issue 18). The load creates no cycles; a failed try's garbage is collected when it fails
        (`_initial_sync`). Frozen while still paused: the first allocation after `gc.enable()` would
        otherwise start a young collection over everything allocated during the pause."""
        gc.freeze()

    def _health_handler(self, state: str) -> Callable[[list[dict[str, Any]], int], None]:
        """One state's watch answer: the non-passing checks are the union of the states' latest answers."""

        def handle(checks: list[dict[str, Any]], index: int) -> None:
            self._by_state[state] = checks
            self._on_health([c for cs in self._by_state.values() for c in cs], index)

        return handle

    # ------------------------------------------------------------------ startup

    async def _initial_sync(self) -> dict[str, int]:
        backoff = Backoff(first=RETRY_MIN, cap=self.retry)
        while True:
            self._health_fp, self._catalog_tags = {}, {}
            self._rereads.pending.clear()
            self._overrides.reset()
            self._catalog_raw = {}
            try:
                self_info = await self.api.agent_self()
                self._routes.env = {"DC": (self_info.get("Config") or {}).get("Datacenter", "")}
                self.status.datacenter = self._routes.env["DC"]
                self._dumps.ok = True
                states = {st: await self.api.get(f"/v1/health/state/{st}") for st in NONPASSING_STATES}
                c = await self.api.get("/v1/catalog/services")
                k = await self.api.get(f"/v1/kv/{self.kvpath}", params={"recurse": ""})
                self.status.requests += 3 + len(states)
                self._on_catalog(c.body or {})
                self._reconcile = False
                # Read the dump after the watch indexes: anything newer fires those watches again.
                indexes = {st: r.index for st, r in states.items()}
                loaded = await self._dumps.load(len(c.body or {}), self._routes.env, self._routes.statuses,
                                                self._routes.checks_all)
                dump = None if loaded is not None else await self._dumps.entries()
                if loaded is not None:
                    self._rereads.pending.clear()
                    self._set_instances(loaded.instances)
                    self._by_state = {st: r.body or [] for st, r in states.items()}
                    self._on_health([c for cs in self._by_state.values() for c in cs])
                    self._rereads.pending.clear()
                    changes = await self._unpack(loaded)
                elif dump is not None:
                    self._rereads.pending.clear()
                    self._set_instances(Instances.of(dump))
                    self._by_state = {st: r.body or [] for st, r in states.items()}
                    self._on_health([c for cs in self._by_state.values() for c in cs])
                    self._rereads.pending.clear()
                    changes = {n: self._routes.commands(n, es) for n, es in dump.items()}
                    changes = {n: v for n, v in changes.items() if v is not None}
                else:
                    h = await self.api.get("/v1/health/state/any")  # fallback: every check, old diffing
                    self.status.requests += 1
                    indexes = {"any": h.index}
                    self._on_health(h.body or [])
                    changes, failed = await self._rereads.collect()
                    if failed:
                        raise ConsulError(f"initial reads of {len(failed)} services failed")
                self._rereads.since.clear()
                manual = self._overrides.commands(k)
                t0 = time.perf_counter()
                self.sink(changes, manual if manual is not None else [])
                self.status.last_dump["table_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                self._rereads.sent = {n: c for n, c in changes.items() if c is not None}
                self._dumps.warm()
                self.status.synced()
                self.status.ready = True
                indexes.update(catalog=c.index, kv=k.index)
                return {name: max(i, 1) for name, i in indexes.items()}
            except ConsulError as e:
                gc.collect()  # the GC is paused during the initial sync (run): a failed try's garbage goes now
                delay = backoff.next()
                self.status.error(f"initial sync: {e}")
                log.warning("consul not ready (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)

    async def _unpack(self, loaded: bulkload.Load) -> dict[str, list[RouteCmd] | None]:
        """The helper's startup load -> the table's changes, one chunk per event-loop turn (the proxy and
        the UI keep answering meanwhile)."""
        changes: dict[str, list[RouteCmd] | None] = {}
        t0 = time.perf_counter()
        for chunk in loaded.chunks:
            for p in bulkload.unpack(chunk):
                cmds = self._routes.record_packed(p.name, p.cmds, p.verdicts, p.errors, p.tagged, (p.healthy, p.instances))
                if cmds is not None:
                    changes[p.name] = cmds
            await asyncio.sleep(0)
        self.status.last_dump["unpack_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return changes

    # ------------------------------------------------------------------ watch loops

    def _answer(self, handle: Callable[[list[dict[str, Any]], int], None]) -> Handler:
        """A health watch's handler: the answer's list of checks (empty unless HTTP 200) and its index."""
        return lambda r, news: self._after_answer(handle(r.body if r.status == 200 else [], r.index))

    def _after_answer(self, _: None = None) -> None:
        if self._reconcile and self._reconcile_since is None:
            # the clock for the router-observed delay starts at the answer that brought the work
            self._reconcile_since = self._loops.answered_at

    def _data_replaced(self) -> None:
        """An index went backwards: Consul lost or replaced its data, so compare every instance now."""
        self._reconcile = True
        self._wake.set()
        self._forget_indexes()

    def _forget_indexes(self) -> None:
        self._rereads.forget_indexes()

    def _health_fps(self, checks: list[dict[str, Any]]) -> dict[str, frozenset]:
        if self._dump_ok:
            return nonpassing_fingerprints(checks, self._node_services, self._tagged, self.prefix)
        return health_fingerprints(checks, self.prefix)

    def _set_instances(self, instances: Instances) -> None:
        """Remember the instances of a dump; re-derive health fingerprints with the new node map."""
        self._instance_fp = instances.fingerprints
        self._tagged = instances.fingerprints.keys() | self._catalog_tags.keys()
        self._node_services = instances.node_services
        self._health_fp = self._health_fps(self._last_health)

    async def _resync_loop(self) -> None:
        """Compare all instances every `resync` seconds: a safety net that costs one read per period."""
        while self.resync > 0:
            await asyncio.sleep(self.resync)
            self._reconcile = True
            self._wake.set()

    def _on_health(self, checks: list[dict[str, Any]], index: int | None = None) -> None:
        """`index`: the answer's X-Consul-Index (None when an earlier answer is diffed again): a service
        whose state at that index a hot watch already brought, or is about to, is not re-read (rereads.py)."""
        self._last_health = checks
        fps = self._health_fps(checks)
        changed = {n for n in fps.keys() | self._health_fp.keys() if fps.get(n) != self._health_fp.get(n)}
        self._health_fp = fps
        if self._dump_ok and index is not None:
            self._rereads.enqueue(changed, None, index, fps, checks)
        else:
            self._enqueue(changed)

    def _on_catalog(self, services: dict[str, list[str]], moved: bool = True) -> None:
        """`moved`: the services index moved (False for an idle timeout or an answer without news, which
        changes no instance: no dump for it)."""
        # Only the names whose tag list differs from the last answer are looked at (10,000 services: the
        # full tag scan per answer held the event loop for 30-50 ms on the shared machine).
        prev, self._catalog_raw = self._catalog_raw, services
        tags = self._catalog_tags.copy()
        differ = {n for n in services.keys() | prev.keys() if services.get(n) != prev.get(n)}
        for n in differ:
            t = services.get(n)
            if t is not None and any(x.strip().startswith(self.prefix) for x in t):
                tags[n] = tuple(t)
            else:
                tags.pop(n, None)
        changed = {n for n in differ if tags.get(n) != self._catalog_tags.get(n)}
        self._catalog_tags = tags
        self._enqueue(changed)
        if changed:
            self._tagged = self._instance_fp.keys() | tags.keys()
            # A service tagged just now had its non-passing checks left out of the last fingerprints (they
            # only cover tagged services): without this, its check turning passing would look like no
            # change until the next instance reconcile (seconds at 30,000 instances).  Diffed, not set
            # silently: the re-read it may queue is issued after this answer, so it sees at least as much.
            self._on_health(self._last_health)
        # The services index also moves when only an instance's address or port changed; neither the
        # tag union nor the checks show that, so compare the instances in bulk (one request).
        if moved:
            self._reconcile = True
            self._wake.set()

    async def _reconcile_instances(self, since: float | None = None) -> None:
        """Enqueue the services whose instances (address, port, tags) differ from the last dump."""
        self._reconcile = False
        instances = await self._dumps.instances()
        if instances is None:
            self._enqueue(set(self._catalog_tags), since)
            return
        before = self._instance_fp
        self._set_instances(instances)
        fps = instances.fingerprints
        self._enqueue({n for n in fps.keys() | before.keys() if fps.get(n) != before.get(n)}, since)

    def _on_kv(self, r: Any) -> None:
        manual = self._overrides.commands(r)
        if manual is not None:
            self._rereads.emit({}, manual, self._loops.answered_at)

    def _enqueue(self, names: set[str], since: float | None = None) -> None:
        self._rereads.enqueue(names, since)

    def _start_reconcile(self) -> None:
        """Called on each wake of the re-reads: start the instance reconcile asked for, unless one runs.

        The instance dump runs beside the per-service reads: at 30,000 instances it takes seconds, and a
        check change meanwhile must not wait for it."""
        if self._reconcile and (self._reconciler is None or self._reconciler.done()):
            since, self._reconcile_since = self._reconcile_since, None
            self._reconcile = False
            self._reconciler = asyncio.ensure_future(self._reconcile_in_background(since))

    async def _reconcile_in_background(self, since: float | None) -> None:
        """One instance reconcile; its changes go through the fetch loop like any other."""
        try:
            await self._reconcile_instances(since)
            self._reconcile_backoff.reset()
        except ConsulError as e:
            self.status.error(f"catalog reconcile: {e}")
            await asyncio.sleep(self._reconcile_backoff.next())
            self._reconcile = True
            if self._reconcile_since is None:
                self._reconcile_since = since
        self._wake.set()  # also when nothing changed: a reconcile asked for meanwhile is started now

    def _learn_nodes(self, name: str, entries: list[dict[str, Any]]) -> None:
        """Map the nodes of a re-read service before the next instance reconcile does: a new instance's node
        check (serfHealth) failing must count for it meanwhile.  The reconcile's dump replaces the map."""
        if not self._dump_ok or name not in self._tagged:
            return
        new = False
        for e in entries:
            names = self._node_services.setdefault((e.get("Node") or {}).get("Node", ""), set())
            if name not in names:
                names.add(name)
                new = True
        if new:  # diffed, not set: the last answer may be newer than this read
            self._on_health(self._last_health)
