"""`allow=` / `deny=` route options: IP access rules, parsed once per distinct option text.

fabio's semantics: rules are `ip:<CIDR or address>` items separated by commas; a bare address means
that single host. An HTTP request is checked by its peer address and by **every** element of every
`X-Forwarded-For` header: with `deny`, any hit denies; with `allow`, every address must be allowed.
A route with both options is an error. fabio then serves the route without any rules; we refuse the
route instead (docs/compat.md), because a typo must not open a protected route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessRules:
    allow: bool  # True: the networks are an allow list; False: a deny list
    networks: tuple[Network, ...]

    def _matches(self, addr: str) -> bool | None:
        try:
            ip = ipaddress.ip_address(addr.strip().strip("[]"))
        except ValueError:
            return None
        return any(ip in n for n in self.networks)

    def permits(self, addresses: Iterable[str]) -> bool:
        """True if every address passes. An unparsable address is refused (fail closed)."""
        for addr in addresses:
            hit = self._matches(addr)
            if hit is None or hit != self.allow:
                return False
        return True


def _parse_list(text: str) -> tuple[Network, ...]:
    nets = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, value = item.partition(":")
        if not sep or kind != "ip":
            raise ValueError(f"access rule {item!r}: expected ip:<address or CIDR>")
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"access rule {item!r}: {value!r} is not an IP address or CIDR") from None
    if not nets:
        raise ValueError("empty access rule list")
    return tuple(nets)


@lru_cache(maxsize=4096)
def _compile(allow: str | None, deny: str | None) -> AccessRules:
    if allow is not None and deny is not None:
        raise ValueError("allow= and deny= cannot both be set on one route")
    if allow is not None:
        return AccessRules(True, _parse_list(allow))
    return AccessRules(False, _parse_list(deny or ""))


def rules_for(opts: Mapping[str, str]) -> AccessRules | None:
    """The compiled rules of a target's options, or None; raises ValueError for invalid rules.

    Cached by option text, so the table build validates them and the proxy gets them for a dict lookup.
    """
    allow, deny = opts.get("allow"), opts.get("deny")
    if allow is None and deny is None:
        return None
    return _compile(allow, deny)


def client_addresses(scope: dict) -> list[str]:
    """The peer address followed by every X-Forwarded-For element, in order."""
    client = scope.get("client") or ("", 0)
    out = [client[0] or ""]
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            out += [v.strip() for v in value.decode("latin-1").split(",") if v.strip()]
    return out


def permitted(opts: Mapping[str, str], scope: dict) -> bool:
    """The proxy's one call: may this request use a target with these options?"""
    rules = rules_for(opts)
    return rules is None or rules.permits(client_addresses(scope))
