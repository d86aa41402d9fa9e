"""An httpx transport over router/proxy/upstream.py's lean keep-alive client, for the Consul watcher.

Why: every Consul change costs the router at least two requests (the watch's answer and the re-read of
the changed service), and httpx's default transport (httpcore + anyio) spent about 1.4 ms of CPU per
request against a local agent, several times what the rest of a change costs (docs/discovery.md,
"Consul client cost"). httpx stays the client API (timeouts, params, headers, respx in unit tests);
only the bytes on the wire go through the same httptools-based code the proxy's hot path uses.
"""

from __future__ import annotations

import asyncio
import ssl

import httpx

from router.proxy.upstream import Upstream
from router.proxy.upstream_errors import ConnectFailed, UpstreamError, UpstreamTimeout


class UpstreamTransport(httpx.AsyncBaseTransport):
    """httpx requests sent through one `Upstream` pool (created in the running loop on first use)."""

    def __init__(self, tls: ssl.SSLContext | None = None, connect_timeout: float = 10.0) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._pool: Upstream | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout") or {}
        body = await request.aread()
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers.raw]
        status, raw, content = await self.fetch(request.method, str(request.url), headers, body,
                                                timeout.get("read"), request)
        return httpx.Response(status, headers=raw, content=content, request=request)

    async def fetch(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                    read: float | None, request: httpx.Request | None = None
                    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One exchange without httpx's client layer (registry/consul/api.py calls this for its GETs:
        that layer cost ~0.6 ms of CPU per request, five times the exchange itself); httpx's errors.

        The read timeout covers the whole answer (a hung agent must not hold a watch forever), through
        `asyncio.timeout` and not `wait_for`, which runs the exchange as a task of its own: two more
        event-loop turns before the answer reaches its caller, each behind everything else ready then."""
        if self._pool is None:
            self._pool = Upstream(dial_timeout=self._connect_timeout, idle_timeout=30.0, max_idle=16,
                                  tls=self._tls)
        try:
            async with asyncio.timeout(read):
                return await self._exchange(method, url, headers, body)
        except TimeoutError as e:
            raise httpx.ReadTimeout(f"no complete answer within {read}s", request=request) from e
        except ConnectFailed as e:
            raise httpx.ConnectError(str(e), request=request) from e
        except UpstreamTimeout as e:
            raise httpx.ReadTimeout(str(e), request=request) from e
        except (UpstreamError, OSError) as e:
            raise httpx.ReadError(str(e), request=request) from e

    async def _exchange(self, method: str, url: str, headers: list[tuple[str, str]],
                        body: bytes | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self._pool is not None
        resp = await self._pool.request(method, url, headers, body if body or method in ("PUT", "POST") else None)
        try:
            content = resp.whole()  # a small answer that came in one read: no streaming loop
            if content is None:
                content = b"".join([c async for c in resp.content.iter_any()])
        except BaseException:
            resp.close()
            raise
        resp.release()
        # httpx must not decode the body again: the transfer coding is already undone here.
        raw = [(n, v) for n, v in resp.raw_headers if n.lower() != b"transfer-encoding"]
        return resp.status, raw, content

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
