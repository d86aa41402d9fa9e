"""Every instance at once: read node by node for the startup load, as one dump for the instance reconcile.

Runs in the dump helper process (helper.py), which reads Consul itself (dumpfetch.py) and hands the
watcher only what it needs: at startup every tagged service's route commands and UI verdicts, for a
reconcile the per-service digests (dump.py).

Why node by node (`/v1/catalog/node/<n>` and `/v1/health/node/<n>`) and not the one-request dump
`/v1/internal/ui/nodes`: at 100,000 instances on 100 nodes Consul took 43 s to answer the dump on the
shared machine (curl, load average 16), and 12.6 s for all the per-node reads four at a time (the dump
is built and encoded on one core before its first byte; per-node answers are encoded in parallel and
decoded here while the next ones are written). The data are the same: a node's services with their
addresses, ports and tags, and its checks (node-level ones included). A node that disappears between
the node list and its read is left out; the watch indexes were read before, so its change fires them.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec

from registry.consul.dump import Instances, _Check, _Service, decode_nodes, dump_entries
from registry.consul.dumpfetch import ConsulTarget, Reader
from registry.consul.services import build
from registry.tags import TagError
from router.table.routecmd import RouteCmd

# Concurrent per-node reads: enough to keep both of Consul's encoding cores and the decoding here busy.
NODE_READS = 4


class _NodeName(msgspec.Struct):
    Node: str = ""


class _NodeInfo(msgspec.Struct):
    Node: str = ""
    Address: str = ""
    Datacenter: str = ""


class _NodeServices(msgspec.Struct):
    Node: _NodeInfo | None = None
    Services: dict[str, _Service] | None = None


_NODE_NAMES = msgspec.json.Decoder(list[_NodeName] | None)
_NODE_SERVICES = msgspec.json.Decoder(_NodeServices | None)
_CHECKS = msgspec.json.Decoder(list[_Check] | None)


@dataclass(frozen=True)
class ReadStats:
    """What a bulk read cost: requests, bytes, wall time of the reads, and of everything."""

    requests: int
    bytes: int
    nodes: int
    read_ms: float
    total_ms: float = 0.0


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off while a load or a reconcile allocates its objects, which hold no cycles.

    Every collection of a young generation walks the objects that survived so far, and a load keeps
    hundreds of thousands alive (decoded nodes, entries, verdicts, commands): with the GC on, the
    load's decoding, building and packing took twice the CPU (100,000 instances, 8.7 against 4.0 s in
    one process). The watcher freezes them after its initial load (ConsulWatcher.after_load)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _node(catalog: bytes, health: bytes) -> dict[str, Any] | None:
    """One node's two answers -> a node as the dump shows it (only the fields used); None if it is gone."""
    try:
        ns = _NODE_SERVICES.decode(catalog)
        checks = _CHECKS.decode(health) or []
    except msgspec.DecodeError as e:
        raise ValueError(f"a node's services or checks are not what Consul sends: {e}") from e
    if ns is None or ns.Node is None:
        return None
    return {"Node": ns.Node.Node, "Address": ns.Node.Address, "Datacenter": ns.Node.Datacenter,
            "Services": msgspec.to_builtins(list((ns.Services or {}).values())),
            "Checks": msgspec.to_builtins(checks)}


def read_nodes(target: ConsulTarget, concurrency: int = NODE_READS) -> tuple[list[dict[str, Any]], ReadStats]:
    """Every node with its services and checks, `concurrency` nodes at a time, each decoded as it arrives
    (so at most `concurrency` nodes' raw answers are held at once)."""
    t0 = time.perf_counter()
    reader = Reader(target)
    try:
        names = [n.Node for n in _NODE_NAMES.decode(reader.get("/v1/catalog/nodes")) or ()]

        def one(name: str) -> dict[str, Any] | None:
            return _node(reader.get("/v1/catalog/node/", name), reader.get("/v1/health/node/", name))

        with ThreadPoolExecutor(max(1, concurrency)) as ex:
            nodes = [n for n in ex.map(one, names) if n is not None]
    finally:
        reader.close()
    ms = round((time.perf_counter() - t0) * 1000, 1)
    return nodes, ReadStats(reader.requests, reader.bytes, len(names), ms)


# The startup load crosses from the helper as msgpack (msgspec), in chunks of services, and the watcher
# decodes one chunk per event-loop turn. Pickle was the first try: 20 MB for 100,000 instances took
# 18 s to pickle and 18 s to unpickle on the shared machine, its frozen dataclasses set field by field in
# Python; msgspec builds them in C (encode 1.6 s, decode 7.7 s for everything, the same run). The UI's
# verdicts stay packed per service until a page or a re-read needs them (status.ServiceStatus).
LOAD_CHUNK = 2000  # services per chunk


class PackedService(msgspec.Struct, array_like=True):
    name: str
    cmds: list[RouteCmd] | None
    verdicts: bytes  # msgpack of list[Verdict], unpacked on first use
    errors: list[TagError]
    tagged: bool
    healthy: int  # instances routed
    instances: int  # instances registered


_PACKED = msgspec.msgpack.Decoder(list[PackedService])


@dataclass(frozen=True)
class Load:
    """The startup load, built in the helper: every tagged service's routes, packed in chunks, and the
    reconcile's baseline."""

    chunks: list[bytes]
    instances: Instances
    stats: ReadStats
    services: int


def unpack(chunk: bytes) -> list[PackedService]:
    """One chunk of a Load, in the watcher, its commands' equal values made one object (`_share`)."""
    services = _PACKED.decode(chunk)
    _share(services)
    return services


# The slots' own setters: RouteCmd is a frozen dataclass, whose __setattr__ refuses; these are what
# object.__setattr__ ends up calling, without its name lookup (the pass took a fifth less time with
# them; rebuilding each command with new_cmd took two and a half times as long).
_SET_SERVICE = RouteCmd.service.__set__  # type: ignore[attr-defined]
_SET_SRC = RouteCmd.src.__set__  # type: ignore[attr-defined]
_SET_WEIGHT = RouteCmd.weight.__set__  # type: ignore[attr-defined]
_SET_TAGS = RouteCmd.tags.__set__  # type: ignore[attr-defined]
_SET_OPTS = RouteCmd.opts.__set__  # type: ignore[attr-defined]
_ZERO, _NEG_ZERO = 0.0, -0.0


def _share(services: list[PackedService]) -> None:
    """Equal field values of a decoded chunk's commands made one object, in place.

    msgspec makes a new object for every string and float it decodes, so each command came with its own
    service name, route source, weight, tags and options although a service's instances share them (the
    helper built them shared: registry/tags.py caches a tag's parse). At 100,000 instances over 33,334
    services that was 100,000 of each where 33,334 (one per service) or one will do. `op` needs nothing
    here: it is decoded as a Literal, which msgspec answers with the literal itself (RouteCmd). `dst`
    and `source` name the instance: left alone. With both, the decoded load took 71.8 -> 52.9 MB of RSS
    (tracemalloc 67.5 -> 50.5 MB, 900,000 -> 533,000 blocks).

    The service becomes the PackedService's name (kept anyway, as the table's key) when equal; the
    others go through memos of this chunk. A weight of -0.0 (`weight=-0` is accepted) equals 0.0 but
    prints differently, so each zero is shared with its own sign. Costs about 25 ms per 100,000 commands
    (unpack 73 -> 92 ms with msgspec's decode; bench/load_sharing.py). msgspec has no option to share
    decoded values itself: a dec_hook is called only for types it does not know."""
    srcs: dict[str, str] = {}
    weights: dict[float, float] = {}
    tags: dict[tuple[str, ...], tuple[str, ...]] = {}
    opts: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
    set_service, set_src, set_weight, set_tags, set_opts = _SET_SERVICE, _SET_SRC, _SET_WEIGHT, _SET_TAGS, _SET_OPTS
    copysign, zero = math.copysign, _ZERO
    for p in services:
        cmds = p.cmds
        if cmds is None:
            continue
        name = p.name
        for c in cmds:
            if c.service == name:
                set_service(c, name)
            s = c.src
            set_src(c, srcs.setdefault(s, s))
            w = c.weight
            if w:
                set_weight(c, weights.setdefault(w, w))
            else:
                set_weight(c, zero if copysign(1.0, w) > 0 else _NEG_ZERO)
            t = c.tags
            if t:  # () is one object already
                set_tags(c, tags.setdefault(t, t))
            o = c.opts
            if o:
                set_opts(c, opts.setdefault(o, o))


def load(target: ConsulTarget, prefix: str, env: dict[str, str], statuses: tuple[str, ...],
         checks_all: bool) -> Load:
    """Read every node and build every tagged service's routes (no holds: nothing is routed yet)."""
    with gc_paused():
        return _load(target, prefix, env, statuses, checks_all)


def _load(target: ConsulTarget, prefix: str, env: dict[str, str], statuses: tuple[str, ...],
          checks_all: bool) -> Load:
    t0 = time.perf_counter()
    nodes, stats = read_nodes(target)
    entries = dump_entries(nodes, prefix)
    del nodes
    enc = msgspec.msgpack.Encoder()
    chunks: list[bytes] = []
    batch: list[PackedService] = []
    for name, es in entries.items():
        b = build(es, prefix, env, statuses, checks_all)
        batch.append(PackedService(name, b.cmds, enc.encode(b.verdicts), b.errors, b.tagged,
                                   sum(1 for v in b.verdicts if v.healthy), len(b.verdicts)))
        if len(batch) >= LOAD_CHUNK:
            chunks.append(enc.encode(batch))
            batch = []
    if batch:
        chunks.append(enc.encode(batch))
    instances = Instances.of(entries)
    _LEFT[:] = [entries]  # not freed before the answer (0.4 s of CPU at 100,000): the helper exits without it (helper.py)
    return Load(chunks, instances, _total(stats, t0), len(entries))


_LEFT: list[object] = []


def reconcile(target: ConsulTarget, prefix: str) -> tuple[Instances, ReadStats]:
    """What an instance reconcile compares, from the one-request dump read here (not node by node: a
    reconcile runs in the background, beside the changes, and one request per reconcile keeps Consul's
    requests per change a small constant; the per-node reads are for the startup load's wall time)."""
    with gc_paused():
        return _reconcile(target, prefix)


def _reconcile(target: ConsulTarget, prefix: str) -> tuple[Instances, ReadStats]:
    t0 = time.perf_counter()
    reader = Reader(target)
    try:
        raw = reader.get("/v1/internal/ui/nodes")
    finally:
        reader.close()
    read_ms = round((time.perf_counter() - t0) * 1000, 1)
    nodes = decode_nodes(raw)
    del raw
    stats = ReadStats(reader.requests, reader.bytes, len(nodes), read_ms)
    return Instances.of(dump_entries(nodes, prefix)), _total(stats, t0)


def _total(stats: ReadStats, t0: float) -> ReadStats:
    return ReadStats(stats.requests, stats.bytes, stats.nodes, stats.read_ms, round((time.perf_counter() - t0) * 1000, 1))
