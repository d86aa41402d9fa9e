"""The pool's scratch buffer for the first read of an answer (router/proxy/upstream_conn.py, COPY_MAX): all
connections share it, so what one read brought must not change when the next read reuses the buffer, for
small answers, an answer whose first read is bigger than COPY_MAX, and a head split over two reads."""

from __future__ import annotations

import asyncio

from router.proxy.upstream import Upstream
from router.proxy.upstream_conn import COPY_MAX, UpstreamConn
from router.proxy.upstream_request import prepare


class _Transport(asyncio.Transport):
    def write(self, data) -> None:  # type: ignore[no-untyped-def]
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)


def _read(conn: UpstreamConn, data: bytes) -> None:
    """What the event loop does for one read: get_buffer, the bytes into it, buffer_updated."""
    buf = conn.get_buffer(-1)
    buf[:len(data)] = data
    conn.buffer_updated(len(data))


async def _body(resp) -> bytes:  # type: ignore[no-untyped-def]
    out = b""
    async for chunk in resp.content.iter_any():
        out += bytes(chunk)
    return out


def test_reads_through_the_scratch_buffer_keep_their_bytes() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        pool = Upstream()
        conns = []
        for _ in range(4):
            c = UpstreamConn(pool, ("http", "h", 80, True), loop)
            c.connection_made(_Transport())
            conns.append(c)
        prep = prepare("GET", "http://h:80/", [("host", "h")], None)
        small = b"a" * 19
        big = bytes(range(256)) * ((COPY_MAX + 4096) // 256)  # a first read over COPY_MAX: takes the buffer along
        tail = b"z" * 100
        r1, r2, r3, r4 = (pool.start(c, prep, None) for c in conns)
        split = _answer(b"s" * 300)
        _read(conns[3], split[:20])  # half a status line, into the scratch buffer
        _read(conns[0], _answer(small))  # copied out of the scratch buffer
        _read(conns[1], _answer(big + tail)[:-len(tail)])  # the scratch buffer goes with this answer
        _read(conns[2], _answer(b"b" * 40))  # into a new scratch buffer, over nothing anyone holds
        _read(conns[1], tail)  # the rest of the big body: a read of its own
        _read(conns[3], split[20:])  # the rest of the head and the body
        for r in (r1, r2, r3, r4):
            await r.headers()
        assert r1.whole() == small
        assert await _body(r2) == big + tail
        assert await _body(r3) == b"b" * 40
        assert await _body(r4) == b"s" * 300
        for r in (r1, r2, r3, r4):
            r.release()
        await pool.close()

    asyncio.run(run())
