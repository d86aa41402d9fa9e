"""A closed HTTP/1.1 client connection leaves no Http1 protocol (nor its httptools parser) behind without a
garbage collection: the parser holds the protocol as its callbacks object, so the pair was a reference
cycle freed only when a collection reached it (the router freezes its startup objects and collections of
the oldest generation are rare). In process: the real listener and proxy core, no route (404), raw sockets."""

from __future__ import annotations

import asyncio

from router.listen.http1 import Http1
from tests.inproc_router import count, run_with_gc_off, start_router


def test_closed_connections_leave_no_http1_protocol_behind() -> None:
    async def main() -> tuple[list[bytes], int, int, int]:
        router = await start_router("route add b /elsewhere http://127.0.0.1:9/")
        answers, while_open = [], 0
        for i in range(10):
            r, w = await asyncio.open_connection("127.0.0.1", router.port)
            w.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append((await r.readuntil(b"\r\n"))[:12])
            if i == 0:
                while_open = count(Http1)  # the count sees a live connection's protocol
            w.close()
            await w.wait_closed()
        for _ in range(100):  # each server side connection_lost seen
            if not router.listener.conns:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        left = count(Http1)
        router.close()
        return answers, while_open, left, len(router.listener.conns)

    answers, while_open, left, conns = run_with_gc_off(main)
    assert answers == [b"HTTP/1.1 404"] * 10
    assert while_open == 1
    assert (left, conns) == (0, 0)
