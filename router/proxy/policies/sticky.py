"""Sticky sessions: a cookie naming the instance, or consistent hashing on the client address or a header.

Cookie mode: a client without a valid cookie gets an instance from the route's picker (so weights hold
over many clients: a 10% canary gets 10% of the new clients), and a ``Set-Cookie`` naming it. The cookie
value is a short hash of the instance's service and URL, so it survives table rebuilds and router
restarts and is the same on every router. While that instance is in the route's pool and not ejected the
client keeps it (a *hit*); otherwise the client is picked anew and re-pinned (a *re-pin*).

Hash mode: weighted rendezvous hashing (highest random weight): each instance scores
``weight / -ln(u)``, ``u`` a uniform hash of (client key, instance); the best score wins. An instance's
share of the clients is its weight's share, and when an instance leaves (or is ejected) only its own
clients move: every other client's best score is unchanged. The key is the named header's value, or the
client address when the header is absent or none is named.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

__all__ = ["target_id", "key_hash", "best_index", "cookie_value", "set_cookie"]

_M64 = (1 << 64) - 1


@lru_cache(maxsize=65536)
def target_id(service: str, url: str) -> str:
    """The cookie value naming an instance: 12 hex digits of a hash of its service and URL."""
    return hashlib.blake2b(f"{service} {url}".encode(), digest_size=6).hexdigest()


@lru_cache(maxsize=65536)
def _seed(service: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{service} {url}".encode(), digest_size=8, person=b"hrw").digest())


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest())


def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit mix of key hash ^ instance seed."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


def _score(h: int, t: Any) -> float:
    u = ((_mix(h ^ _seed(t.service, t.url)) >> 11) + 0.5) * (1.0 / (1 << 53))  # in (0, 1)
    return t.weight / -math.log(u)


def best_index(h: int, pool: Sequence[Any], skip: Sequence[bool]) -> int:
    """The index of the instance with the highest rendezvous score for key hash ``h``, leaving out those whose
    ``skip`` is true (ejected now) and those of weight 0; -1 when none is left."""
    top, top_score = -1, -1.0
    for i, t in enumerate(pool):
        if not skip[i] and t.weight > 0:
            s = _score(h, t)
            if s > top_score:
                top, top_score = i, s
    return top


def cookie_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    """The value of cookie ``name`` in the request's Cookie headers, "" when it has none."""
    for n, v in headers:
        if n != b"cookie":
            continue
        for part in v.split(b";"):
            k, eq, val = part.strip().partition(b"=")
            if eq and k == name:
                return val.strip().strip(b'"').decode("latin-1")
    return ""


def set_cookie(spec: Any, value: str, path: str, tls: bool = False) -> bytes:
    """The Set-Cookie header value pinning a client to an instance for the route at ``path``; without an
    explicit ``secure=``, a request that came over TLS gets a Secure cookie."""
    parts = [f"{spec.cookie}={value}", f"Path={path or '/'}"]
    if spec.max_age:
        parts.append(f"Max-Age={spec.max_age}")
    if spec.httponly:
        parts.append("HttpOnly")
    if spec.secure or (spec.secure is None and tls):
        parts.append("Secure")
    if spec.samesite:
        parts.append(f"SameSite={spec.samesite}")
    return "; ".join(parts).encode("latin-1")
