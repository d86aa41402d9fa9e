"""The instance dump, `/v1/internal/ui/nodes` (or the same nodes read one by one, bulkload.py): decoded,
regrouped per service and fingerprinted (pure functions).

At 30,000 instances the dump is 36 MB of JSON. The initial load needs all of it (it builds every route from
it); a later reconcile only needs to know which services' instances changed, so it is reduced to
per-service digests and the node -> services map. Large ones are handled in the helper process
(helper.py), so the watcher's event loop (which also swaps tables, and with one worker proxies) is not
held for the seconds that decoding takes (docs/discovery.md, "Known limits").
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec

log = logging.getLogger("registry.consul")


# Only the fields the routes, the UI's verdicts and the fingerprints use. Decoded against this schema,
# msgspec skips every other field of the dump (Meta, TaggedAddresses, Weights, Proxy, Connect, check
# Definitions, Notes, indexes: most of its bytes) without building objects for them.
class _Check(msgspec.Struct):
    CheckID: str = ""
    Status: str = ""
    ServiceID: str = ""
    Output: str = ""
    Type: str = ""


class _Service(msgspec.Struct):
    ID: str = ""
    Service: str = ""
    Address: str = ""
    Port: int = 0
    Tags: list[str] | None = None


class _Node(msgspec.Struct):
    Node: str = ""
    Address: str = ""
    Datacenter: str = ""
    Services: list[_Service] | None = None
    Checks: list[_Check] | None = None


_NODES = msgspec.json.Decoder(list[_Node])


def decode_nodes(raw: bytes) -> list[dict[str, Any]]:
    """The dump's JSON -> its nodes as dicts holding only the fields used here; ValueError if it is not a
    list of nodes. The dicts have the dump's own shape, so every function below takes either."""
    try:
        return msgspec.to_builtins(_NODES.decode(raw))
    except msgspec.DecodeError as e:  # also a field of the wrong type (msgspec.ValidationError)
        raise ValueError(f"the instance dump is not a list of nodes: {e}") from e


def dump_entries(nodes: list[dict[str, Any]], prefix: str) -> dict[str, list[dict[str, Any]]]:
    """`/v1/internal/ui/nodes` -> per tagged service, entries shaped like `/v1/health/service/<name>`.

    One request gives every node with its services and checks, so the initial load and the catalog
    reconcile cost one read instead of one per service.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    tagged: set[str] = set()
    none: list[dict[str, Any]] = []
    for n in nodes:
        by_service: dict[str, list[dict[str, Any]]] = {}  # grouped once: a node may carry thousands
        for c in n.get("Checks") or ():
            sid = c.get("ServiceID") or ""
            got = by_service.get(sid)
            if got is None:
                by_service[sid] = [c]
            else:
                got.append(c)
        node_checks = by_service.get("", none)
        node = {"Node": n.get("Node", ""), "Address": n.get("Address", ""), "Datacenter": n.get("Datacenter", "")}
        for svc in n.get("Services") or ():
            name = svc.get("Service", "")
            if name not in tagged and any(t.strip().startswith(prefix) for t in svc.get("Tags") or ()):
                tagged.add(name)
            sid = svc.get("ID")
            own = by_service.get(sid, none) if sid else none
            entry = {"Node": node, "Service": svc, "Checks": node_checks + own if node_checks else list(own)}
            got_entries = out.get(name)
            if got_entries is None:
                out[name] = [entry]
            else:
                got_entries.append(entry)
    return {name: entries for name, entries in out.items() if name in tagged}




def catalog_fingerprints(entries: dict[str, list[dict[str, Any]]]) -> dict[str, bytes]:
    """Per service: a digest of the instance facts a route depends on besides check status.

    Address, port and tags, and which checks exist: a passing check added to or removed from an
    instance changes its health without showing up among the non-passing checks. A digest, not the
    facts: it is compared for equality only, and it crosses from the helper process cheaply (Python's
    own `hash()` of strings differs between processes, blake2b does not).
    """
    out: dict[str, bytes] = {}
    encode = _FACTS.encode  # msgpack, not repr(): the same digest for the same facts, in C (issue 18)
    blake2b = hashlib.blake2b
    for name, es in entries.items():
        facts = sorted(
            (e["Node"]["Node"], e["Service"].get("ID", ""), e["Service"].get("Address") or e["Node"]["Address"],
             int(e["Service"].get("Port") or 0), e["Service"].get("Tags") or [],
             sorted([c.get("CheckID", "") for c in e["Checks"]]))
            for e in es
        )
        out[name] = blake2b(encode(facts), digest_size=16).digest()
    return out


_FACTS = msgspec.msgpack.Encoder()


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
    return Instances.of(dump_entries(decode_nodes(raw), prefix))
