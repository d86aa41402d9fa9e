"""Reading the instance dump, `/v1/internal/ui/nodes`, for the watcher: the whole load at startup, and the
bulk compare of a reconcile (decoded by dump.py, in its helper process when the dump is large).

The endpoint is internal to Consul's UI; where it is missing (an agent or proxy that hides it), the
watcher falls back to one read per service, decided once at startup (`ok`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from registry.consul import bulkload
from registry.consul.api import ConsulAPI, ConsulError
from registry.consul.dump import Instances, dump_entries
from registry.consul.dumpfetch import ConsulTarget, DumpFetchError, DumpUnavailable
from registry.consul.helper import IN_PROCESS_BYTES, DumpDecoder
from registry.consul.status import RegistryStatus

log = logging.getLogger("registry.consul")

DUMP_PATH = "/v1/internal/ui/nodes"
# A catalog with this many services or more is loaded by the helper process (helper.py). Below, loading in
# the watcher is quicker than starting a Python interpreter with its imports (0.5-1 s of CPU, several s
# of wall time on the shared machine): with 1,000 services (3,000 instances) the helper load made the
# router ready after 10.7-23.5 s at load average 15-25, the in-process one 5.7-7.7 s at 12-13 in the
# morning. Nothing is routed before the load anyway; reconciles move to the helper once a dump is 1 MiB.
HELPER_SERVICES = 3000


class DumpSource:
    """The dump reads of one watcher, counted in `status` (requests, dumps, last_dump)."""

    def __init__(self, api: ConsulAPI, status: RegistryStatus, prefix: str) -> None:
        self.api = api
        self.status = status
        self.prefix = prefix
        self.ok = True  # False when the endpoint is unavailable: reconcile re-reads every service
        self.large = False  # read and decoded by the helper process, node by node (bulkload.py)
        self.decoder = DumpDecoder()

    def target(self) -> ConsulTarget:
        """The watcher's Consul settings, for the helper process."""
        api = self.api
        return ConsulTarget(api.base_url, api.consistency, tuple(api.headers.items()), api.tls,
                            api.read_timeout(api.wait))

    def _stats(self, stats: bulkload.ReadStats, **extra: float) -> None:
        self.status.requests += stats.requests
        self.status.dumps += 1
        self.status.last_dump = {"at": time.time(), "bytes": stats.bytes, "nodes": stats.nodes,
                                 "requests": stats.requests, "read_ms": stats.read_ms,
                                 "helper_ms": stats.total_ms, **extra}

    async def load(self, services: int, env: dict[str, str], statuses: tuple[str, ...],
                   checks_all: bool) -> bulkload.Load | None:
        """The startup load through the helper when the catalog lists `services` >= HELPER_SERVICES;
        None: small, or the helper cannot run (then `entries` reads the dump here)."""
        if not self.ok or services < HELPER_SERVICES:
            return None
        try:
            got = await self.decoder.load(self.target(), self.prefix, env, statuses, checks_all)
        except (DumpFetchError, DumpUnavailable, ValueError) as e:
            raise ConsulError(f"startup load: {e}") from e
        if got is not None:
            self.large = True
            self._stats(got.stats)
        return got

    async def raw(self) -> bytes | None:
        """The instance dump's bytes; None when the endpoint is not available (the per-service fallback)."""
        if not self.ok:
            return None
        t0 = time.perf_counter()
        r = await self.api.get(DUMP_PATH, decode=False)
        self.status.requests += 1
        self.status.dumps += 1
        raw = r.body if r.status == 200 else b""
        if not raw.lstrip()[:1] == b"[":
            if self.status.ready:  # the mode was chosen at startup; a later failure is just an error
                raise ConsulError(f"{DUMP_PATH} answered HTTP {r.status} without a JSON list")
            self.ok = False
            log.warning("%s unavailable: falling back to one read per service", DUMP_PATH)
            return None
        self.status.last_dump = {"at": time.time(), "bytes": len(raw), "read_ms": round((time.perf_counter() - t0) * 1000, 1)}
        return raw

    async def entries(self) -> dict[str, list[dict[str, Any]]] | None:
        """Every tagged service's entries in one read (the initial load builds every route from them)."""
        raw = await self.raw()
        if raw is None:
            return None
        t0 = time.perf_counter()
        try:
            nodes = orjson.loads(raw)
        except ValueError as e:
            raise ConsulError(f"{DUMP_PATH}: invalid JSON: {e}") from e
        entries = dump_entries(nodes, self.prefix)
        self.status.last_dump["decode_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return entries

    async def instances(self) -> Instances | None:
        """What a reconcile compares; None when the endpoint is not available."""
        if self.large:
            t0 = time.perf_counter()
            try:
                got = await self.decoder.reconcile(self.target(), self.prefix)
            except (DumpFetchError, DumpUnavailable, ValueError) as e:
                raise ConsulError(f"instance reconcile: {e}") from e
            if got is not None:
                self._stats(got[1], decode_ms=round((time.perf_counter() - t0) * 1000, 1))
                return got[0]
            self.large = False  # the helper cannot run: read the dump here
        raw = await self.raw()
        if raw is None:
            return None
        t0 = time.perf_counter()
        try:
            instances = await self.decoder.summarize(raw, self.prefix)  # decoded in the helper process
        except ValueError as e:
            raise ConsulError(f"{DUMP_PATH}: {e}") from e
        self.status.last_dump["decode_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        if len(raw) >= IN_PROCESS_BYTES:
            self.large = True  # grown: from now on the helper reads it itself
        return instances

    def warm(self) -> None:
        """Start the helper process now if the dumps are large enough to need it (dump.py)."""
        self.decoder.warm(int(self.status.last_dump.get("bytes", 0)))
