"""Which listener serves proxy.addr: our own (router/listen/server.py) or, until it passes every test,
uvicorn's (router/listen/uvicorn_server.py). `ROUTER_LISTENER=own` in the environment picks ours; it is
read once per process, so the main process and its workers agree."""

from __future__ import annotations

import os
from typing import Any

from router.config.settings import Config, client_idle_timeout
from router.listen.server import Listener
from router.proxy.handler import ProxyApp
from router.proxy.websocket import tunnel_protocol

LISTENER_ENV = "ROUTER_LISTENER"


def own_listener() -> bool:
    return os.environ.get(LISTENER_ENV, "uvicorn") == "own"


def proxy_server(proxy: ProxyApp, cfg: Config) -> Any:
    """The proxy port's server, with uvicorn.Server's `serve(sockets=None)`, `should_exit`, `started`."""
    if own_listener():
        return Listener(proxy, idle_timeout=client_idle_timeout(cfg.raw.get("proxy.addr", ":9999")),
                        max_head=cfg["proxy.maxheaderbytes"], tunnel=tunnel_protocol(proxy), addr=cfg["proxy.addr"])
    from router.listen.uvicorn_server import Server, proxy_server_config

    return Server(proxy_server_config(proxy, cfg))
