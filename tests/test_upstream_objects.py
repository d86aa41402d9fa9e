"""A closed upstream connection leaves no UpstreamConn behind without a garbage collection: its httptools
parser holds the protocol as its callbacks object, so the pair was a reference cycle, one per connection an
instance closed (`Connection: close`, an idle timeout), freed only when a collection reached it (the router
freezes its startup objects and collections of the oldest generation are rare). In process: the real
listener, proxy core and upstream client; a backend that closes after each answer but the first; raw sockets."""

from __future__ import annotations

import asyncio

from router.listen.http1 import Http1
from router.proxy.upstream_conn import UpstreamConn
from router.proxy.upstream_response import Response
from tests.inproc_router import count, run_with_gc_off, start_instance, start_router


def test_connections_the_instance_closed_leave_no_upstream_conn_behind() -> None:
    served = 0

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Keeps the first answer's connection open (the count must see it), closes after every later one."""
        nonlocal served
        while True:
            await r.readuntil(b"\r\n\r\n")
            served += 1
            close = b"Connection: close\r\n" if served > 1 else b""
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + close + b"\r\nok")
            await w.drain()
            if close:
                w.close()
                return

    async def main() -> tuple[list[bytes], int, int]:
        instance, port_b = await start_instance(backend)
        router = await start_router(f"route add b / http://127.0.0.1:{port_b}/")
        answers, while_open = [], 0
        for i in range(10):
            r, w = await asyncio.open_connection("127.0.0.1", router.port)
            w.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            answers.append(head[:12] + await r.readexactly(2))
            if i == 0:
                await asyncio.sleep(0.05)
                while_open = count(UpstreamConn)  # the kept-alive upstream connection, in the pool
            w.close()
            await w.wait_closed()
        await asyncio.sleep(0.2)  # each upstream connection_lost seen
        left = count(UpstreamConn)
        router.close()
        instance.close()
        return answers, while_open, left

    answers, while_open, left = run_with_gc_off(main)
    assert answers == [b"HTTP/1.1 200ok"] * 10
    assert while_open == 1
    assert left == 0


def test_an_answer_the_instance_broke_off_is_cut_counted_and_leaves_nothing_behind(caplog) -> None:  # type: ignore[no-untyped-def]
    """An instance that closes mid-body, after the head went out: the client's connection is closed with the
    body cut short, the route counts a 5xx, one warning line names the instance (no "the proxy failed"
    traceback), and no Response, UpstreamConn or Http1 stays behind: the stored error's traceback held the
    Response's frames, a cycle per failed answer."""

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)  # past proxy.retry.buffer
        await w.drain()
        w.close()

    async def main() -> tuple[list[int], int, int]:
        instance, port_b = await start_instance(backend)
        router = await start_router(f"route add b / http://127.0.0.1:{port_b}/")
        got = []
        for _ in range(5):
            r, w = await asyncio.open_connection("127.0.0.1", router.port)
            w.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            got.append(len(await asyncio.wait_for(r.read(), 10)))  # to EOF: the router closed the connection
            w.close()
            await w.wait_closed()
        await asyncio.sleep(0.2)
        table = router.state.table
        assert table is not None
        route = table.lookup("x", "/x")
        assert route is not None
        errors = sum(rs.classes[5] for rs in (route.stats or {}).values())
        left = count(Response, UpstreamConn, Http1)
        router.close()
        instance.close()
        return got, errors, left

    got, errors, left = run_with_gc_off(main)
    head = len(b"HTTP/1.1 200 OK\r\n")
    assert all(head + 70000 <= n < head + 100000 for n in got), got  # the head and what came, cut short
    assert errors == 5
    assert left == 0
    assert "broke off its answer" in caplog.text and "the proxy failed" not in caplog.text
