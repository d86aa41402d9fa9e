"""Pooled keep-alive HTTP/1.1 client for the hot path, on aiohttp.

Why aiohttp and not httpx here: per proxied request httpx costs 10-30x more CPU (its
httpcore/anyio layers), measured in docs/datapath.md. This module hides the choice behind three
exceptions so the proxy can map failures to statuses and decide when a retry is safe.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence

import aiohttp
from yarl import URL


class ConnectFailed(Exception):
    """The upstream could not be connected to: nothing was sent, so another instance may be tried."""


class UpstreamTimeout(Exception):
    """The upstream did not answer in time (504)."""


class UpstreamError(Exception):
    """The upstream connection broke or answered garbage (502)."""


class Upstream:
    """One pool of connections to every upstream; created inside the running event loop."""

    def __init__(self, *, dial_timeout: float = 30.0, idle_timeout: float = 15.0, max_idle: int = 10000,
                 keepalive: float = 0.0) -> None:
        self.dial_timeout = dial_timeout or None
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def _make_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,  # no global cap: per-host idle connections are what fabio's maxconn limits
            limit_per_host=0,
            keepalive_timeout=self.idle_timeout or None,
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
            socket_factory=self._socket_factory if self.keepalive else None,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.dial_timeout, connect=self.dial_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _socket_factory(self, addr_info):  # type: ignore[no-untyped-def]
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(self.keepalive)))
        return sock

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterator[bytes] | bytes | None,
        *,
        header_timeout: float = 0.0,
        verify_tls: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send the request; return the response once its headers arrived. The caller must release it."""
        if self._session is None:
            self._session = self._make_session()
        ctx = self._session.request(
            method,
            URL(url, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            ssl=None if verify_tls else False,
            compress=None,
            chunked=None,
        )
        try:
            if header_timeout > 0:
                return await asyncio.wait_for(ctx.__aenter__(), header_timeout)
            return await ctx.__aenter__()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            if isinstance(e, aiohttp.ConnectionTimeoutError):
                raise ConnectFailed(f"connect timeout after {self.dial_timeout}s") from e
            raise ConnectFailed(str(e)) from e
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise UpstreamTimeout(f"no response headers within {header_timeout}s") from e
        except aiohttp.ClientError as e:
            raise UpstreamError(f"{type(e).__name__}: {e}") from e
