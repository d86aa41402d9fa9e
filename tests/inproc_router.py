"""The router's HTTP/1.1 data path in this process, for tests that count live objects with the GC off: the
real listener, proxy core and upstream client on one event loop (uvloop, as the router runs), no subprocess
whose heap a test cannot see. Used by tests/test_http1_objects.py and tests/test_upstream_objects.py."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import uvloop

from router.config.settings import load
from router.listen.server import Listener
from router.run.assemble import build_proxy
from router.table.routecmd import parse
from router.table.state import RouterState

T = TypeVar("T")


@dataclass
class InProcRouter:
    state: RouterState
    listener: Listener
    server: asyncio.AbstractServer
    port: int

    def close(self) -> None:
        self.server.close()


async def start_router(route: str) -> InProcRouter:
    """A router with the one static route command `route`, listening on a free loopback port."""
    cfg = load(["-registry.backend", "static", "-proxy.workers", "1"])
    state = RouterState()
    state.apply({"b": parse(route, "static")[0]})
    listener = Listener(build_proxy(cfg, state), max_head=cfg["proxy.maxheaderbytes"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = await listener.add(sock)
    return InProcRouter(state, listener, server, sock.getsockname()[1])


async def start_instance(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                         ) -> tuple[asyncio.AbstractServer, int]:
    """A backend instance on a free loopback port, answering each connection with `handler`."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def run_with_gc_off(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main()` on the router's loop with the cyclic GC off after one collection: what is still alive at
    its end stayed alive without a collection (a reference cycle)."""
    gc.collect()
    gc.disable()
    try:
        return uvloop.run(main())  # type: ignore[arg-type]
    finally:
        gc.enable()


def count(*types: type) -> int:
    """Live objects of `types` the GC tracks."""
    return sum(isinstance(o, types) for o in gc.get_objects())
