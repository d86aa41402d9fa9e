"""Watch Consul and tell the router which services' routes changed.

Design (docs/discovery.md): two blocking queries watch the whole catalog cheaply —
`/v1/health/state/any` (every check: health changes, new and removed instances) and
`/v1/catalog/services` (names and tags) — and a third watches the override keys in KV. Their answers are
diffed per service; only services whose checks or tags changed are re-read, each with one
`/v1/health/service/<name>` call that carries addresses, tags and checks together. So the reads per
change are proportional to what changed, and an idle router holds three outstanding blocking queries.

Failures never remove routes: a watch that errors backs off (capped, jittered) and keeps its last
answer; a service whose re-read fails keeps its last routes and is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.consul_api import Backoff, ConsulAPI, ConsulError, TokenBucket, decode_kv, next_index
from registry.health import Verdict, judge_all
from registry.tags import TagError, route_cmds
from router.routecmd import LineError, RouteCmd, parse

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
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    manual_errors: list[LineError] = field(default_factory=list)
    datacenter: str = ""

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
        self._routed: set[str] = set()  # services that currently have routes in the table
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._kv_text: list[tuple[str, str]] | None = None
        self._env: dict[str, str] = {}

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Initial full sync (retried until Consul answers), then the watch loops, forever."""
        indexes = await self._initial_sync()
        await asyncio.gather(
            self._watch("health", "/v1/health/state/any", indexes["health"], self._on_health),
            self._watch("catalog", "/v1/catalog/services", indexes["catalog"], self._on_catalog),
            self._watch("kv", f"/v1/kv/{self.kvpath}", indexes["kv"], self._on_kv, params={"recurse": ""}),
            self._fetch_loop(),
        )

    # ------------------------------------------------------------------ startup

    async def _initial_sync(self) -> dict[str, int]:
        backoff = Backoff()
        while True:
            self._health_fp, self._catalog_tags, self._pending, self._kv_text = {}, {}, set(), None
            try:
                self_info = await self.api.agent_self()
                self._env = {"DC": (self_info.get("Config") or {}).get("Datacenter", "")}
                self.status.datacenter = self._env["DC"]
                h = await self.api.get("/v1/health/state/any")
                c = await self.api.get("/v1/catalog/services")
                k = await self.api.get(f"/v1/kv/{self.kvpath}", params={"recurse": ""})
                self.status.requests += 4
                self._on_health(h.body or [])
                self._on_catalog(c.body or {})
                changes, failed = await self._collect()
                if failed:
                    raise ConsulError(f"initial reads of {len(failed)} services failed")
                manual = self._manual_from(k)
                self.sink(changes, manual if manual is not None else [])
                self.status.synced()
                self.status.ready = True
                return {"health": max(h.index, 1), "catalog": max(c.index, 1), "kv": max(k.index, 1)}
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
        bucket = TokenBucket(self.max_rate)
        backoff = Backoff()
        while True:
            await bucket.take()
            try:
                r = await self.api.get(path, index=index, params=params)
            except ConsulError as e:
                self.status.requests += 1
                delay = backoff.next()
                self.status.error(f"{name} watch: {e}")
                log.warning("%s watch failed (%s); keeping the last routes, retrying in %.1fs", name, e, delay)
                await asyncio.sleep(delay)
                continue
            self.status.requests += 1
            backoff.reset()
            self.status.synced()
            new = next_index(index, r.index)
            if new == 0:
                log.warning("%s watch: index went backwards (%d -> %d); re-reading everything", name, index, r.index)
            self.status.indexes[name] = r.index
            index = new
            if name == "kv":
                handle(r)
            else:
                handle(r.body if r.status == 200 else ([] if name == "health" else {}))

    def _on_health(self, checks: list[dict[str, Any]]) -> None:
        fps = _health_fingerprints(checks, self.prefix)
        changed = {n for n in fps.keys() | self._health_fp.keys() if fps.get(n) != self._health_fp.get(n)}
        self._health_fp = fps
        self._enqueue(changed)

    def _on_catalog(self, services: dict[str, list[str]]) -> None:
        tags = {n: tuple(t) for n, t in services.items() if any(x.strip().startswith(self.prefix) for x in t)}
        changed = {n for n in tags.keys() | self._catalog_tags.keys() if tags.get(n) != self._catalog_tags.get(n)}
        self._catalog_tags = tags
        self._enqueue(changed)

    def _enqueue(self, names: set[str]) -> None:
        if names:
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
            self.sink({}, manual)

    # ------------------------------------------------------------------ per-service reads

    async def _fetch_loop(self) -> None:
        backoff = Backoff()
        while True:
            await self._wake.wait()
            changes, _ = await self._collect()
            if changes:
                self.sink(changes, None)
            if self._pending:  # some reads failed: retry them after a pause
                await asyncio.sleep(backoff.next())
            else:
                backoff.reset()

    async def _collect(self) -> tuple[dict[str, list[RouteCmd] | None], set[str]]:
        """Re-read every pending service; return their new commands. Failed reads stay pending."""
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

    async def _service_cmds(self, name: str) -> list[RouteCmd] | None:
        r = await self.api.get(f"/v1/health/service/{name}")
        self.status.requests += 1
        entries = r.body if r.status == 200 and r.body else []
        verdicts = judge_all(entries, self.statuses, self.checks_all)
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
        if cmds:
            self._routed.add(name)
            return cmds
        self._routed.discard(name)
        return None
