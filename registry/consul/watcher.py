"""Watch Consul and tell the router which services' routes changed.

Design (docs/discovery.md): four blocking queries whatever the number of services —
`/v1/health/state/critical` and `/warning` (the non-passing checks: small answers), `/v1/catalog/services` (names,
tags, and the trigger for an instance reconcile) and the override keys in KV. The initial load and each
reconcile read every instance once from `/v1/internal/ui/nodes` (one request, not one per service), which
also catches address/port moves that neither checks nor tags show. Only services whose fingerprint
changed are re-read with `/v1/health/service/<name>`, so the reads per change follow what changed.

Failures never remove routes: a watch that errors backs off (capped, jittered) and keeps its last
answer; a service whose re-read fails keeps its last routes and is retried.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from registry.consul.api import Backoff, ConsulAPI, ConsulError, decode_kv, next_index
from registry.consul.dump import DumpDecoder, Instances, dump_entries
from registry.consul.health import UNRUN_HOLD, Verdict, judge_all
from registry.consul.hot import HOT_LIMIT, HotWatches
from registry.consul.pacing import WatchPacer
from registry.tags import TagError, route_cmds
from router.table.routecmd import LineError, RouteCmd, parse

log = logging.getLogger("registry.consul")

Sink = Callable[[dict[str, list[RouteCmd] | None], list[RouteCmd] | None], None]


@dataclass
class ServiceStatus:
    """What the UI shows for one tagged service: its instances and why any are not routed."""

    name: str
    verdicts: list[Verdict] = field(default_factory=list)
    tag_errors: list[TagError] = field(default_factory=list)
    routes: int = 0
    updated: float = 0.0


@dataclass
class RegistryStatus:
    """The watcher's health, read by the UI and /health."""

    backend: str = "consul"
    addr: str = ""
    connected: bool = False
    ready: bool = False
    last_sync: float = 0.0  # wall time of the last successful Consul answer
    indexes: dict[str, int] = field(default_factory=dict)
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=50))
    error_count: int = 0
    requests: int = 0
    paced: int = 0  # watch answers without news after which a loop waited for its rate limit (pacing.py)
    dumps: int = 0  # /v1/internal/ui/nodes reads (each is O(instances) for Consul and for us)
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    manual_errors: list[LineError] = field(default_factory=list)
    datacenter: str = ""
    # ms from "a watch returned a new Consul index" to "the table with that change was swapped in"
    propagation_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    propagation_count: int = 0
    last_dump: dict[str, float] = field(default_factory=dict)  # the latest /v1/internal/ui/nodes read

    def propagated(self, ms: float) -> None:
        self.propagation_ms.append(ms)
        self.propagation_count += 1

    def propagation_summary(self) -> dict[str, float | int | None]:
        """p50/p90/max of the recent delays (nearest rank), for /api/status."""
        xs = sorted(self.propagation_ms)
        if not xs:
            return {"count": 0, "last_ms": None, "p50_ms": None, "p90_ms": None, "max_ms": None}

        def rank(p: float) -> float:
            return round(xs[min(len(xs) - 1, max(0, -(-len(xs) * p // 100) - 1))], 3)

        return {"count": self.propagation_count, "last_ms": round(self.propagation_ms[-1], 3),
                "p50_ms": rank(50), "p90_ms": rank(90), "max_ms": round(xs[-1], 3)}

    def error(self, text: str) -> None:
        self.errors.append((time.time(), text))
        self.error_count += 1
        self.connected = False

    def synced(self) -> None:
        self.last_sync = time.time()
        self.connected = True

    def sync_age(self) -> float | None:
        return None if not self.last_sync else time.time() - self.last_sync


def _health_fingerprints(checks: list[dict[str, Any]], prefix: str) -> dict[str, frozenset]:
    """Per tagged service: the set of facts about its checks and its nodes' checks.

    Two answers with equal fingerprints for a service mean nothing that decides its routes changed.
    """
    node_checks: dict[str, list[tuple[str, str]]] = {}
    per_service: dict[str, set] = {}
    nodes_of: dict[str, set[str]] = {}
    for c in checks:
        node = c.get("Node", "")
        sid = c.get("ServiceID", "")
        if not sid:
            node_checks.setdefault(node, []).append((c.get("CheckID", ""), c.get("Status", "")))
            continue
        name = c.get("ServiceName", "")
        tags = tuple(c.get("ServiceTags") or ())
        per_service.setdefault(name, set()).add((node, sid, c.get("CheckID", ""), c.get("Status", ""), tags))
        nodes_of.setdefault(name, set()).add(node)
    out: dict[str, frozenset] = {}
    for name, facts in per_service.items():
        if not any(t.startswith(prefix) for f in facts for t in f[4]):
            continue
        node_facts = {(n, cid, st) for n in nodes_of[name] for cid, st in node_checks.get(n, ())}
        out[name] = frozenset(facts | node_facts)
    return out


# Watched separately instead of `/v1/health/state/any?filter=Status != "passing"`: Consul answers these from
# its status index, touching only checks in that state (3.5 ms at 30,000 instances, woken only when a check
# enters or leaves the state), while the filter evaluated every check on every change (97 ms at 30,000).
NONPASSING_STATES = ("critical", "warning")


def _nonpassing_fingerprints(checks: list[dict[str, Any]], node_services: dict[str, set[str]],
                             tagged: Any, prefix: str | None = None) -> dict[str, frozenset]:
    """Per tagged service: its non-passing checks and those of its nodes.

    With the instances and their check IDs known from the dump, the set of checks that are *not*
    passing determines every check's status, so equal fingerprints mean equal health. The body of
    this watch is O(non-passing checks) instead of O(all checks).

    With `prefix`, a service check whose own `ServiceTags` carry a route tag counts as tagged even before
    the catalog answer says so: a new instance registered critical is then re-read (and watched, hot.py)
    at once, and its check turning passing is routed without waiting for `/v1/catalog/services`, which
    Consul answers slowly while it writes an instance dump (seconds at 30,000 instances, issue 18).
    """
    out: dict[str, set] = {}
    for c in checks:
        node, sid = c.get("Node", ""), c.get("ServiceID", "")
        fact = (node, sid, c.get("CheckID", ""), c.get("Status", ""))
        names = {c.get("ServiceName", "")} if sid else node_services.get(node, set())
        for name in names:
            if name in tagged or (sid and prefix is not None
                                  and any(t.strip().startswith(prefix) for t in c.get("ServiceTags") or ())):
                out.setdefault(name, set()).add(fact)
    return {n: frozenset(f) for n, f in out.items()}


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
    ) -> None:
        self.api = api
        self.sink = sink
        self.prefix = tagprefix
        self.kvpath = kvpath.strip("/")
        self.statuses = statuses
        self.checks_all = checks_all
        self.max_rate = max_rate
        self.status = status or RegistryStatus(addr=api.base_url)
        self.fetch_concurrency = fetch_concurrency
        self._health_fp: dict[str, frozenset] = {}
        self._catalog_tags: dict[str, tuple[str, ...]] = {}
        self._catalog_raw: dict[str, list[str]] = {}  # the last /v1/catalog/services answer
        self._sent: dict[str, list[RouteCmd]] = {}  # the commands the table has per service (see _emit)
        self._hold_started: dict[str, float] = {}  # service -> when its routed instances began waiting for unrun checks
        self._pending: set[str] = set()
        self._since: dict[str, float] = {}  # pending service -> monotonic time the change was first seen
        self._inflight: dict[str, float | None] = {}  # service being re-read -> when its change was seen
        self._ready: dict[str, list[RouteCmd] | None] = {}  # re-read results not yet handed to the table
        self._ready_since: float | None = None
        self._fetch_backoff = Backoff()
        self._svc_index: dict[str, int] = {}  # service -> the per-service Consul index of the state applied
        self._hot = HotWatches(api, self._hot_answer, limit=hot_limit, max_rate=max_rate, count=self._count)
        self._answered_at = 0.0  # monotonic time of the latest watch answer
        self._instance_fp: dict[str, bytes] = {}
        self._decoder = DumpDecoder()
        self._reconcile = False  # the catalog index moved: compare instances (address/port) in bulk
        self._reconcile_since: float | None = None  # the answer that asked for the pending reconcile
        self._dump_ok = True  # False when /v1/internal/ui/nodes is unavailable: reconcile re-reads all
        self._node_services: dict[str, set[str]] = {}
        self._tagged: set[str] = set()  # the two maps' keys, kept once per change instead of per health answer
        self._resets: dict[str, asyncio.Event] = {}  # per watch: abandon the blocking read, restart at 0
        self._last_health: list[dict[str, Any]] = []
        self._by_state: dict[str, list[dict[str, Any]]] = {st: [] for st in NONPASSING_STATES}
        self.resync = resync
        self.unrun_hold = unrun_hold  # registry.consul.unrunhold; 0: an unrun check counts as failing at once
        self._wake = asyncio.Event()
        self._kv_text: list[tuple[str, str]] | None = None
        self._env: dict[str, str] = {}
        self._reconciler: asyncio.Future[None] | None = None
        self._reconcile_backoff = Backoff()

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Initial full sync (retried until Consul answers), then the watch loops, forever."""
        indexes = await self._initial_sync()
        # The initial load leaves long-lived objects (instances, fingerprints, the table) that the cyclic GC
        # would otherwise rescan during later changes; move them out of its way once.
        gc.collect()
        gc.freeze()
        if self._dump_ok:
            health = [self._watch(state, f"/v1/health/state/{state}", indexes[state], self._health_handler(state))
                      for state in NONPASSING_STATES]
        else:
            health = [self._watch("any", "/v1/health/state/any", indexes["any"], self._on_health)]
        try:
            await asyncio.gather(
                *health,
                self._resync_loop(),
                self._watch("catalog", "/v1/catalog/services", indexes["catalog"], self._on_catalog),
                self._watch("kv", f"/v1/kv/{self.kvpath}", indexes["kv"], self._on_kv, params={"recurse": ""}),
                self._fetch_loop(),
            )
        finally:
            self._hot.clear()

    def _count(self) -> None:
        self.status.requests += 1

    def _health_handler(self, state: str) -> Callable[[list[dict[str, Any]]], None]:
        """One state's watch answer: the non-passing checks are the union of the states' latest answers."""

        def handle(checks: list[dict[str, Any]]) -> None:
            self._by_state[state] = checks
            self._on_health([c for cs in self._by_state.values() for c in cs])

        return handle

    # ------------------------------------------------------------------ startup

    async def _initial_sync(self) -> dict[str, int]:
        backoff = Backoff()
        while True:
            self._health_fp, self._catalog_tags, self._pending, self._kv_text = {}, {}, set(), None
            self._catalog_raw = {}
            try:
                self_info = await self.api.agent_self()
                self._env = {"DC": (self_info.get("Config") or {}).get("Datacenter", "")}
                self.status.datacenter = self._env["DC"]
                self._dump_ok = True
                states = {st: await self.api.get(f"/v1/health/state/{st}") for st in NONPASSING_STATES}
                c = await self.api.get("/v1/catalog/services")
                k = await self.api.get(f"/v1/kv/{self.kvpath}", params={"recurse": ""})
                self.status.requests += 3 + len(states)
                self._on_catalog(c.body or {})
                self._reconcile = False
                # Read the dump after the watch indexes: anything newer fires those watches again.
                dump = await self._read_dump()
                indexes = {st: r.index for st, r in states.items()}
                if dump is not None:
                    self._pending = set()
                    self._set_instances(Instances.of(dump))
                    self._by_state = {st: r.body or [] for st, r in states.items()}
                    self._on_health([c for cs in self._by_state.values() for c in cs])
                    self._pending = set()
                    changes = {n: self._cmds_from_entries(n, es) for n, es in dump.items()}
                    changes = {n: v for n, v in changes.items() if v is not None}
                else:
                    h = await self.api.get("/v1/health/state/any")  # fallback: every check, old diffing
                    self.status.requests += 1
                    indexes = {"any": h.index}
                    self._on_health(h.body or [])
                    changes, failed = await self._collect()
                    if failed:
                        raise ConsulError(f"initial reads of {len(failed)} services failed")
                self._since = {}
                manual = self._manual_from(k)
                self.sink(changes, manual if manual is not None else [])
                self._sent = {n: c for n, c in changes.items() if c is not None}
                self._decoder.warm(int(self.status.last_dump.get("bytes", 0)))
                self.status.synced()
                self.status.ready = True
                indexes.update(catalog=c.index, kv=k.index)
                return {name: max(i, 1) for name, i in indexes.items()}
            except ConsulError as e:
                delay = backoff.next()
                self.status.error(f"initial sync: {e}")
                log.warning("consul not ready (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ watch loops

    async def _watch(
        self,
        name: str,
        path: str,
        index: int,
        handle: Callable[[Any], None],
        params: dict[str, str] | None = None,
    ) -> None:
        pacer = WatchPacer(self.max_rate, time.monotonic(), index)
        backoff = Backoff()
        probe = False
        delay = 0.0
        while True:
            if delay > 0:  # only after an answer without news (registry/consul/pacing.py)
                await asyncio.sleep(delay)
                delay = 0.0
            reset = self._resets.setdefault(name, asyncio.Event())
            try:
                # After an error the agent may have restarted with other data, and a blocking read on an
                # index it has not reached would just wait: ask without an index once to compare.
                r = await self._get_unless(reset, path, None if probe else index, params)
                probe = False
                if r is None:  # another watch saw Consul's data replaced: start over from index 0
                    reset.clear()
                    index = 0
                    # a read cut short is an answer without news: paced like one, or watches that keep
                    # resetting each other (an index stuck at 0) would re-read without any wait
                    delay = pacer.quiet.take(time.monotonic())
                    continue
            except ConsulError as e:
                probe = True
                self.status.requests += 1
                self._forget_indexes()  # the agent may come back with other data
                delay = backoff.next()
                self.status.error(f"{name} watch: {e}")
                log.warning("%s watch failed (%s); keeping the last routes, retrying in %.1fs", name, e, delay)
                await asyncio.sleep(delay)
                continue
            self.status.requests += 1
            backoff.reset()
            self.status.synced()
            delay = pacer.after(r.index, time.monotonic())
            if delay > 0:
                self.status.paced += 1
            news = r.index > index
            new = next_index(index, r.index)
            if new == 0:
                log.warning("%s watch: index went backwards (%d -> %d); re-reading everything", name, index, r.index)
                # Consul lost or replaced its data: the other watches may be parked on indexes it will not
                # reach for a while, so compare every instance now instead of waiting for them.
                self._reconcile = True
                self._wake.set()
                self._forget_indexes()
                for other, ev in self._resets.items():
                    if other != name:
                        ev.set()
            self._answered_at = time.monotonic()
            self.status.indexes[name] = r.index
            index = new
            if name == "kv":
                handle(r)
            elif name == "catalog":
                self._on_catalog(r.body if r.status == 200 else {}, moved=news)
            else:
                handle(r.body if r.status == 200 else [])
            if self._reconcile and self._reconcile_since is None:
                # the clock for the router-observed delay starts at the answer that brought the work
                self._reconcile_since = self._answered_at

    def _forget_indexes(self) -> None:
        self._svc_index.clear()
        self._hot.clear()

    def _health_fps(self, checks: list[dict[str, Any]]) -> dict[str, frozenset]:
        if self._dump_ok:
            return _nonpassing_fingerprints(checks, self._node_services, self._tagged, self.prefix)
        return _health_fingerprints(checks, self.prefix)

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

    async def _get_unless(
        self, reset: asyncio.Event, path: str, index: int | None, params: dict[str, str] | None
    ) -> Any:
        """A blocking read that is abandoned (None) when `reset` is set while it waits."""
        get = asyncio.ensure_future(self.api.get(path, index=index, params=params))
        stop = asyncio.ensure_future(reset.wait())
        try:
            await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if get.done():
            return get.result()
        get.cancel()
        return None

    def _on_health(self, checks: list[dict[str, Any]]) -> None:
        self._last_health = checks
        fps = self._health_fps(checks)
        changed = {n for n in fps.keys() | self._health_fp.keys() if fps.get(n) != self._health_fp.get(n)}
        self._health_fp = fps
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

    async def _read_dump_raw(self) -> bytes | None:
        """The instance dump's bytes; None when the endpoint is not available (the per-service fallback)."""
        if not self._dump_ok:
            return None
        t0 = time.perf_counter()
        r = await self.api.get("/v1/internal/ui/nodes", decode=False)
        self.status.requests += 1
        self.status.dumps += 1
        raw = r.body if r.status == 200 else b""
        if not raw.lstrip()[:1] == b"[":
            if self.status.ready:  # the mode was chosen at startup; a later failure is just an error
                raise ConsulError(f"/v1/internal/ui/nodes answered HTTP {r.status} without a JSON list")
            self._dump_ok = False
            log.warning("/v1/internal/ui/nodes unavailable: falling back to one read per service")
            return None
        self.status.last_dump = {"at": time.time(), "bytes": len(raw), "read_ms": round((time.perf_counter() - t0) * 1000, 1)}
        return raw

    async def _read_dump(self) -> dict[str, list[dict[str, Any]]] | None:
        """Every tagged service's entries in one read (the initial load builds every route from them)."""
        raw = await self._read_dump_raw()
        if raw is None:
            return None
        t0 = time.perf_counter()
        try:
            nodes = orjson.loads(raw)
        except ValueError as e:
            raise ConsulError(f"/v1/internal/ui/nodes: invalid JSON: {e}") from e
        entries = dump_entries(nodes, self.prefix)
        self.status.last_dump["decode_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return entries

    async def _reconcile_instances(self, since: float | None = None) -> None:
        """Enqueue the services whose instances (address, port, tags) differ from the last dump."""
        self._reconcile = False
        raw = await self._read_dump_raw()
        if raw is None:
            self._enqueue(set(self._catalog_tags), since)
            return
        t0 = time.perf_counter()
        try:
            instances = await self._decoder.summarize(raw, self.prefix)  # decoded in the helper process
        except ValueError as e:
            raise ConsulError(f"/v1/internal/ui/nodes: {e}") from e
        self.status.last_dump["decode_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        before = self._instance_fp
        self._set_instances(instances)
        fps = instances.fingerprints
        self._enqueue({n for n in fps.keys() | before.keys() if fps.get(n) != before.get(n)}, since)

    def _enqueue(self, names: set[str], since: float | None = None) -> None:
        """Mark services for a re-read; `since` (default: now) is when the change that needs it was seen."""
        if names:
            at = time.monotonic() if since is None else since
            for n in names:
                if n not in self._since or at < self._since[n]:
                    self._since[n] = at
            self._pending |= names
            self._wake.set()

    def _manual_from(self, r: Any) -> list[RouteCmd] | None:
        """Override commands from the KV answer; None when the text did not change."""
        items = decode_kv(r.body) if r.status == 200 else []
        if items == self._kv_text:
            return None
        self._kv_text = items
        cmds: list[RouteCmd] = []
        errors: list[LineError] = []
        for key, text in items:
            c, e = parse(text, source=f"kv:{key}")
            cmds.extend(c)
            errors.extend(e)
        self.status.manual_errors = errors
        for e in errors:
            log.warning("override rejected: %s", e)
        return cmds

    def _on_kv(self, r: Any) -> None:
        manual = self._manual_from(r)
        if manual is not None:
            self._emit({}, manual, self._answered_at)

    def _emit(
        self, changes: dict[str, list[RouteCmd] | None], manual: list[RouteCmd] | None, since: float | None
    ) -> None:
        """Hand a change to the table and record how long it took from the watch answer to the swap.

        Services whose commands equal what the table has are left out, and a change that leaves nothing
        is no swap: an instance reconcile re-reads every service it cannot rule out, and timing those
        no-op re-reads against the reconcile's trigger reported seconds for changes applied in ms.
        """
        sent = self._sent
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

    # ------------------------------------------------------------------ per-service reads

    async def _fetch_loop(self) -> None:
        """Re-read each pending service at once, beside the reads already in flight, and hand the results
        to the table as they arrive (those finished in the same event-loop turn in one swap).

        It used to re-read in batches: a change seen while a batch was in flight waited for the whole
        batch (its slowest read) before its own read started, which doubled the delay of a burst of
        changes (issue 18). A service that changes again while it is being read is read once more after.
        """
        sem = asyncio.Semaphore(self.fetch_concurrency)
        tasks: set[asyncio.Future[None]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._reconcile and (self._reconciler is None or self._reconciler.done()):
                    # The instance dump runs beside the per-service reads: at 30,000 instances it takes
                    # seconds, and a check change meanwhile must not wait for it.
                    since, self._reconcile_since = self._reconcile_since, None
                    self._reconcile = False
                    self._reconciler = asyncio.ensure_future(self._reconcile_in_background(since))
                for name in sorted(self._pending - self._inflight.keys()):
                    self._pending.discard(name)
                    self._inflight[name] = self._since.pop(name, None)
                    task = asyncio.ensure_future(self._read_one(name, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()
            if self._reconciler is not None:
                self._reconciler.cancel()

    async def _read_one(self, name: str, sem: asyncio.Semaphore) -> None:
        """One service's re-read; its result waits in `_ready` for the next `_flush` (scheduled once per turn)."""
        since = self._inflight.get(name)
        try:
            async with sem:
                entries, index = await self._service_read(name)
        except ConsulError as e:
            self.status.error(f"service {name}: {e}")
            # retried after a pause, keeping the time of its change; new changes meanwhile read at once
            asyncio.get_running_loop().call_later(self._fetch_backoff.next(), self._enqueue, {name}, since)
            return
        finally:
            self._inflight.pop(name, None)
            if name in self._pending:  # changed again while being read: read it again
                self._wake.set()
        self._fetch_backoff.reset()
        self._hot.touch(name, index)
        self._accept(name, entries, index, since)

    def _hot_answer(self, name: str, entries: list[dict[str, Any]], index: int, since: float) -> None:
        """A hot service's own watch answered with a new index (registry/consul/hot.py)."""
        self._accept(name, entries, index, since)

    def _accept(self, name: str, entries: list[dict[str, Any]], index: int, since: float | None) -> None:
        """One service's entries, from a re-read or its hot watch: applied unless an answer with a higher
        per-service index already was (the two may cross); the result waits in `_ready` for `_flush`."""
        if index < self._svc_index.get(name, 0):
            return
        self._svc_index[name] = index
        self._learn_nodes(name, entries)
        cmds = self._cmds_from_entries(name, entries)
        if not self._ready:
            asyncio.get_running_loop().call_soon(self._flush)
        self._ready[name] = cmds
        if since is not None:
            self._ready_since = since if self._ready_since is None else min(since, self._ready_since)

    def _flush(self) -> None:
        changes, self._ready = self._ready, {}
        since, self._ready_since = self._ready_since, None
        if changes:
            self._emit(changes, None, since)

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

    async def _collect(self) -> tuple[dict[str, list[RouteCmd] | None], set[str]]:
        """Re-read every pending service at once (the initial load without the dump); return their new
        commands. Failed reads stay pending."""
        self._wake.clear()
        names, self._pending = self._pending, set()
        sem = asyncio.Semaphore(self.fetch_concurrency)
        changes: dict[str, list[RouteCmd] | None] = {}
        failed: set[str] = set()

        async def one(name: str) -> None:
            async with sem:
                try:
                    changes[name] = await self._service_cmds(name)
                except ConsulError as e:
                    failed.add(name)
                    self.status.error(f"service {name}: {e}")

        await asyncio.gather(*(one(n) for n in sorted(names)))
        if failed:
            self._pending |= failed
            self._wake.set()
        return changes, failed

    def _holdable(self, name: str) -> set[str]:
        """Instances of `name` routed now whose not-yet-run checks may still count as passing."""
        prev = self.status.services.get(name)
        started = self._hold_started.get(name)
        if prev is None or self.unrun_hold <= 0 or (started is not None and time.monotonic() - started >= self.unrun_hold):
            return set()
        return {v.instance.id for v in prev.verdicts if v.healthy}

    def _track_holds(self, name: str, verdicts: list[Verdict]) -> None:
        """A hold lasts `unrun_hold` at most: then the service is re-read and its unrun checks count as failing."""
        if not any(v.held for v in verdicts):
            self._hold_started.pop(name, None)
        elif name not in self._hold_started:
            self._hold_started[name] = time.monotonic()
            log.info("service %s: keeping routed instances whose checks have not run yet (agent restart?)", name)
            asyncio.get_running_loop().call_later(self.unrun_hold, self._enqueue, {name})

    async def _service_read(self, name: str) -> tuple[list[dict[str, Any]], int]:
        """`/v1/health/service/<name>`: its entries and its X-Consul-Index (the service's own index)."""
        r = await self.api.get(f"/v1/health/service/{name}")
        self.status.requests += 1
        return (r.body if r.status == 200 and r.body else []), r.index

    async def _service_cmds(self, name: str) -> list[RouteCmd] | None:
        entries, index = await self._service_read(name)
        self._svc_index[name] = index
        self._learn_nodes(name, entries)
        return self._cmds_from_entries(name, entries)

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

    def _cmds_from_entries(self, name: str, entries: list[dict[str, Any]]) -> list[RouteCmd] | None:
        verdicts = judge_all(entries, self.statuses, self.checks_all, self._holdable(name))
        self._track_holds(name, verdicts)
        cmds: list[RouteCmd] = []
        errors: list[TagError] = []
        tagged = False
        for v in verdicts:
            if any(t.startswith(self.prefix) for t in v.instance.tags):
                tagged = True
            if not v.healthy:
                continue
            c, e = route_cmds(v.instance, self.prefix, self._env)
            cmds.extend(c)
            errors.extend(e)
        for e in errors:
            log.warning("route tag rejected: %s", e)
        if tagged:
            self.status.services[name] = ServiceStatus(name, verdicts, errors, len(cmds), time.time())
        else:
            self.status.services.pop(name, None)
        return cmds or None
