"""uvicorn as today's server for both ports: the proxy listener's HTTP protocol (uvicorn's httptools
protocol with our framing guard, body and write mixins) and the settings shared by the main process and
every worker. The admin UI keeps uvicorn; the proxy port moves to our own listener (issue 15)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http import httptools_impl

from router.config.settings import Config, client_idle_timeout
from router.listen.fastbody import FastBodyHttpToolsProtocol
from router.listen.fastwrite import CoalescingHttpToolsProtocol
from router.proxy.handler import ProxyApp
from router.proxy.request_guard import GuardedHttpToolsProtocol
from router.proxy.websocket import tunnel_protocol


class Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to us: two servers share one process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: object, addr: tuple[str, int], http: object = "httptools", ws: object = "none",
                    **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=addr[0],
        port=addr[1],
        loop="none",
        http=http,  # type: ignore[arg-type]
        ws=ws,  # the proxy passes its own byte-level tunnel class (router/proxy/websocket.py)
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the peer address is the socket's: X-Forwarded-* must not rewrite it (allow=, XFF)
        date_header=False,
        **extra,
    )


class ProxyProtocol(GuardedHttpToolsProtocol, FastBodyHttpToolsProtocol, CoalescingHttpToolsProtocol):
    """The proxy listener's HTTP protocol: parser errors with their reason, request bodies without
    uvicorn's copies (router/listen/fastbody.py), and coalesced small writes."""


def allow_any_status() -> None:
    """Let uvicorn send every 3-digit status, as Go's net/http does: its status-line table stops at 599,
    so `proxy.noroutestatus=999` (fabio's range is 100-999) or an upstream's 9xx closed the connection
    without an answer."""
    for code in range(600, 1000):
        httptools_impl.STATUS_LINE.setdefault(code, b"HTTP/1.1 %d \r\n" % code)


def proxy_server_config(proxy: ProxyApp, cfg: Config, app: object = None) -> uvicorn.Config:
    """uvicorn settings of the proxy listener, the same in the main process and in every worker."""
    allow_any_status()
    return uvicorn_config(app or proxy, cfg["proxy.addr"], http=ProxyProtocol,
                           ws=tunnel_protocol(proxy),
                           timeout_keep_alive=client_idle_timeout(cfg.raw.get("proxy.addr", ":9999")))


