"""The protocol of a TLS connection, as ALPN chose it: `h2` gets HTTP/2 (router/listen/h2proto.py),
anything else (`http/1.1`, or no ALPN at all) HTTP/1.1 (router/listen/http1.py).

asyncio creates a connection's protocol before the TLS handshake but calls its `connection_made` only
after it, when the ALPN choice is known: this placeholder then hands the transport to the real one.
What the handshake negotiated (version, cipher suite) is read once per connection and given to each of
its requests as the ASGI TLS extension, for `Forwarded: ...; tlsver=; tlscipher=` (router/proxy/headers.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from router.listen.h2proto import H2
from router.listen.http1 import Http1
from router.listen.tlsinfo import tls_extension

if TYPE_CHECKING:
    from router.listen.server import Listener

ALPN = ("h2", "http/1.1")  # what TLS listeners offer, in order of preference


class _WithTLS:
    """The proxy core as one TLS connection's HTTP/1.1 requests see it: each request gets the extension."""

    __slots__ = ("core", "tls")

    def __init__(self, core: Any, tls: dict[str, int] | None) -> None:
        self.core = core
        self.tls = tls

    async def serve(self, scope: dict, exchange: Any) -> None:
        if self.tls is not None:
            scope["extensions"] = {"tls": self.tls}
        await self.core.serve(scope, exchange)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


class TLSHttp1(Http1):
    """HTTP/1.1 on a TLS connection: the same protocol, its requests carrying the TLS extension."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.core = _WithTLS(self.core, tls_extension(transport))
        super().connection_made(transport)


class Negotiated(asyncio.Protocol):
    def __init__(self, listener: Listener, client: tuple[str, int] | None = None) -> None:
        self.listener = listener
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        obj = transport.get_extra_info("ssl_object")
        alpn = obj.selected_alpn_protocol() if obj is not None else None
        cls = H2 if alpn == "h2" else TLSHttp1
        proto: asyncio.Protocol = cls(self.listener, self.client)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:  # closed before the handshake finished
        return None
