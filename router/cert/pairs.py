"""From the PEM files a certificate source read to certificate/key pairs, by fabio's naming rules (pure).

A source gives `{file name: bytes}`. `x-cert.pem` pairs with `x-key.pem`; any other `x.pem` holds both
the certificate and its key. Pairs are ordered by the certificate file's name, and the first one is the
default certificate (for clients without SNI, or a name no certificate has, unless `strictmatch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class CertError(ValueError):
    """A certificate source gave something that is not a usable certificate/key pair."""


@dataclass(frozen=True, slots=True)
class Pair:
    name: str  # the certificate's file (or key) name, for messages
    cert: bytes
    key: bytes


def pairs(blocks: Mapping[str, bytes]) -> list[Pair]:
    """fabio's cert/load.go pairing: `-cert.pem`/`-key.pem`, else a `.pem` with both; names sorted."""
    found: dict[str, Pair] = {}
    for name in blocks:
        if name.endswith("-cert.pem"):
            cert_name, key_name = name, name[: -len("-cert.pem")] + "-key.pem"
        elif name.endswith("-key.pem"):
            cert_name, key_name = name[: -len("-key.pem")] + "-cert.pem", name
        elif name.endswith(".pem"):
            cert_name = key_name = name
        else:
            continue
        if cert_name in found:
            continue
        cert, key = blocks.get(cert_name), blocks.get(key_name)
        if cert is None or key is None:
            missing = key_name if cert is not None else cert_name
            raise CertError(f"cannot load certificate {name}: {missing} is missing")
        found[cert_name] = Pair(cert_name, cert, key)
    return [found[n] for n in sorted(found)]
