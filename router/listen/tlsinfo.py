"""What a TLS connection negotiated, in the ASGI TLS extension's numbers (`tls_version` 0x0303,
`cipher_suite` 0xc02f): computed once per connection, read by the Forwarded header (tlsver=, tlscipher=)."""

from __future__ import annotations

import asyncio

from router.cert.tlsctx import cipher_ids

VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, int] | None:
    """None for a plain transport."""
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return None
    cipher = obj.cipher()
    return {"tls_version": VERSIONS.get(obj.version() or "", 0),
            "cipher_suite": cipher_ids().get(cipher[0], 0) if cipher else 0}
