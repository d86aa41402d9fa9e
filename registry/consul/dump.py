"""The instance dump, `/v1/internal/ui/nodes`: regrouped per service, fingerprinted, decoded off the loop.

At 30,000 instances the dump is 36 MB of JSON. The initial load needs all of it (it builds every route from
it); a later reconcile only needs to know which services' instances changed. So a reconcile hands the raw
bytes to one helper process that decodes and regroups them and sends back per-service digests and the
node -> services map: the watcher's event loop (which also swaps tables, and with one worker proxies)
is not held for the few hundred ms that decoding takes (docs/discovery.md, "Known limits").
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger("registry.consul")


def dump_entries(nodes: list[dict[str, Any]], prefix: str) -> dict[str, list[dict[str, Any]]]:
    """`/v1/internal/ui/nodes` -> per tagged service, entries shaped like `/v1/health/service/<name>`.

    One request gives every node with its services and checks, so the initial load and the catalog
    reconcile cost one read instead of one per service.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    tagged: set[str] = set()
    for n in nodes:
        by_service: dict[str, list[dict[str, Any]]] = {}  # grouped once: a node may carry thousands
        for c in n.get("Checks") or ():
            by_service.setdefault(c.get("ServiceID") or "", []).append(c)
        node_checks = by_service.get("", [])
        node = {"Node": n.get("Node", ""), "Address": n.get("Address", ""), "Datacenter": n.get("Datacenter", "")}
        for svc in n.get("Services") or []:
            name = svc.get("Service", "")
            if any(t.strip().startswith(prefix) for t in svc.get("Tags") or ()):
                tagged.add(name)
            own = by_service.get(svc.get("ID") or "", []) if svc.get("ID") else []
            out.setdefault(name, []).append({"Node": node, "Service": svc, "Checks": node_checks + own})
    return {name: entries for name, entries in out.items() if name in tagged}




def catalog_fingerprints(entries: dict[str, list[dict[str, Any]]]) -> dict[str, bytes]:
    """Per service: a digest of the instance facts a route depends on besides check status.

    Address, port and tags, and which checks exist: a passing check added to or removed from an
    instance changes its health without showing up among the non-passing checks. A digest, not the
    facts: it is compared for equality only, and it crosses from the helper process cheaply (Python's
    own `hash()` of strings differs between processes, blake2b does not).
    """
    out: dict[str, bytes] = {}
    for name, es in entries.items():
        facts = sorted(
            (e["Node"]["Node"], e["Service"].get("ID", ""), e["Service"].get("Address") or e["Node"]["Address"],
             int(e["Service"].get("Port") or 0), tuple(e["Service"].get("Tags") or ()),
             tuple(sorted(c.get("CheckID", "") for c in e["Checks"])))
            for e in es
        )
        out[name] = hashlib.blake2b(repr(facts).encode(), digest_size=16).digest()
    return out


def node_services(entries: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """node -> tagged services with an instance on it (a node check's change affects all of them)."""
    out: dict[str, set[str]] = {}
    for name, es in entries.items():
        for e in es:
            out.setdefault(e["Node"]["Node"], set()).add(name)
    return out




@dataclass(frozen=True)
class Instances:
    """What a reconcile compares: per tagged service a digest, and which tagged services live on a node."""

    fingerprints: dict[str, bytes]
    node_services: dict[str, set[str]]

    @classmethod
    def of(cls, entries: dict[str, list[dict[str, Any]]]) -> Instances:
        return cls(catalog_fingerprints(entries), node_services(entries))


def summarize(raw: bytes, prefix: str) -> Instances:
    """Decode a dump and reduce it to what a reconcile compares (runs in the helper process)."""
    nodes = orjson.loads(raw)
    if not isinstance(nodes, list):
        raise ValueError("the instance dump is not a JSON list")
    return Instances.of(dump_entries(nodes, prefix))


# Below this size a dump is decoded in the watcher: a few ms (about 1,000 instances), less than handing
# the bytes over, and no helper process (a Python interpreter, ~35 MB RSS) is started for small catalogs.
IN_PROCESS_BYTES = 1 << 20


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def large_buffers_from_mmap(threshold: int = IN_PROCESS_BYTES) -> bool:
    """Make glibc serve allocations of `threshold` bytes or more with mmap, which returns them to the OS
    when freed. By default glibc raises that threshold to the largest block freed so far, so the dumps
    (3.7 MB at 3,000 instances, 36 MB at 30,000), read in the event loop and pickled for the helper in the
    queue's feeder thread, were served from per-thread heaps and fragmented them: the router's RSS grew by
    a few MB per dump (69 -> 85 MB over 30 dumps at 3,000 instances; 69 -> 74 MB with this). False where
    the C library is not glibc (nothing changes there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


class DumpDecoder:
    """One spawned helper process for `summarize` of large dumps; in-process for small ones, and when the
    helper cannot run (said so once)."""

    def __init__(self, in_process_bytes: int = IN_PROCESS_BYTES) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._broken = False
        self.in_process_bytes = in_process_bytes

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            large_buffers_from_mmap()
            # spawn, not fork: the parent runs an event loop and threads that a fork would copy mid-state.
            # niced: its decoding is a background comparison, and on a small machine it must not take the
            # CPU from the event loop or from Consul answering the next change (issue 18)
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=os.nice, initargs=(10,))
        return self._pool

    def warm(self, size: int) -> asyncio.Future[int] | None:
        """Start the helper now (at startup) if dumps of `size` bytes will need it: its interpreter start
        (~0.3-1 s of CPU here) otherwise fell on the first change after startup (issue 18: "the first
        round after the background load up to 1.7 s")."""
        if self._broken or size < self.in_process_bytes or self._pool is not None:
            return None
        try:
            return asyncio.get_running_loop().run_in_executor(self._start(), os.getpid)
        except (OSError, RuntimeError) as e:
            log.warning("instance dump helper process failed to start (%s); decoding in the watcher", e)
            self._broken = True
            return None

    async def summarize(self, raw: bytes, prefix: str) -> Instances:
        if not self._broken and len(raw) >= self.in_process_bytes:
            try:
                self._start()
                assert self._pool is not None
                return await asyncio.get_running_loop().run_in_executor(self._pool, summarize, raw, prefix)
            except (BrokenProcessPool, OSError, RuntimeError) as e:
                log.warning("instance dump helper process failed (%s); decoding in the watcher from now on", e)
                self._broken = True
                self.close()
        return summarize(raw, prefix)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
