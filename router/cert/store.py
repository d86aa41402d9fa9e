"""Which certificate a TLS handshake gets: fabio's SNI rules over an immutable set (pure).

A :class:`CertSet` is built once per change of a certificate source and then only read: the listener's
SNI callback looks the client's server name up in it. Replacing the set is one reference swap, so a new
certificate reaches the next handshake at once and open connections keep the one they negotiated.

fabio's rules (cert/store.go): no certificates -> the handshake fails. One certificate and no
`strictmatch` -> that one. Otherwise the server name (lower case, trailing dots dropped) is looked up
exactly, then with its labels replaced by `*` one after another from the left (`a.b.c` -> `*.b.c` ->
`*.*.c` -> ...). No match -> the first certificate, or a failed handshake with `strictmatch`. Names come
from each certificate's subject CN and its DNS subject alternative names; a later certificate (in file
name order) that claims the same name wins, as in fabio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CertSet(Generic[T]):
    """Certificates (any payload, e.g. an ssl.SSLContext) with the names each one serves."""

    items: tuple[T, ...]
    names: dict[str, T]

    @classmethod
    def build(cls, entries: Sequence[tuple[T, Sequence[str]]]) -> CertSet[T]:
        names: dict[str, T] = {}
        for item, item_names in entries:
            for n in item_names:
                if n:
                    names[n.lower()] = item
        return cls(tuple(item for item, _ in entries), names)

    def pick(self, server_name: str | None, strict: bool) -> T | None:
        """The certificate for a ClientHello's server name (None = no SNI); None = fail the handshake."""
        if not self.items:
            return None
        if not strict and len(self.items) == 1:
            return self.items[0]
        name = (server_name or "").lower().rstrip(".")
        hit = self.names.get(name)
        if hit is not None:
            return hit
        if name:
            labels = name.split(".")
            for i in range(len(labels)):
                labels[i] = "*"
                hit = self.names.get(".".join(labels))
                if hit is not None:
                    return hit
        return None if strict else self.items[0]


EMPTY: CertSet = CertSet((), {})
