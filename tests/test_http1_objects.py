"""A closed HTTP/1.1 client connection leaves no Http1 protocol (nor its httptools parser) behind without a
garbage collection: the parser holds the protocol as its callbacks object, so the pair was a reference
cycle freed only when a collection reached it (the router freezes its startup objects and collections of
the oldest generation are rare). In process: the real listener and proxy core, no route (404), raw sockets."""

from __future__ import annotations

import asyncio
import gc
import socket

import uvloop

from router.config.settings import load
from router.listen.http1 import Http1
from router.listen.server import Listener
from router.run.assemble import build_proxy
from router.table.routecmd import parse
from router.table.state import RouterState


def test_closed_connections_leave_no_http1_protocol_behind() -> None:
    def alive() -> int:
        return sum(isinstance(o, Http1) for o in gc.get_objects())

    async def main() -> tuple[list[bytes], int, int, int]:
        cfg = load(["-registry.backend", "static", "-proxy.workers", "1"])
        state = RouterState()
        state.apply({"b": parse("route add b /elsewhere http://127.0.0.1:9/", "static")[0]})
        listener = Listener(build_proxy(cfg, state), max_head=cfg["proxy.maxheaderbytes"])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        srv = await listener.add(sock)
        port = sock.getsockname()[1]
        answers, while_open = [], 0
        for i in range(10):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append((await r.readuntil(b"\r\n"))[:12])
            if i == 0:
                while_open = alive()  # the count sees a live connection's protocol
            w.close()
            await w.wait_closed()
        for _ in range(100):  # each server side connection_lost seen
            if not listener.conns:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        left = alive()
        srv.close()
        return answers, while_open, left, len(listener.conns)

    gc.collect()
    gc.disable()
    try:
        answers, while_open, left, conns = uvloop.run(main())  # the router's loop
    finally:
        gc.enable()
    assert answers == [b"HTTP/1.1 404"] * 10
    assert while_open == 1
    assert (left, conns) == (0, 0)
