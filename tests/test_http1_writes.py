"""The listener's answer framing (router/listen/http1.py) on a fake transport: a small answer leaves in one
write, head first; big bodies go straight through after the held head, in order; chunked framing and
its end; a closed connection stops the writer. (It replaced router/listen/fastwrite.py's coalescing.)"""

from __future__ import annotations

import asyncio

import pytest

from router.listen.http1_exchange import COALESCE, Http1Exchange
from router.proxy.exchange import ClientGone


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> None:
        return None  # no socket: the slow-reader window check (router/listen/slowread.py) finds nothing


class FakeConn:
    """The part of Http1 an exchange uses."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.lost = False
        self.write_paused = False
        self.window_checked = False
        self.finished: list[Http1Exchange] = []

    def finish(self, ex: Http1Exchange) -> None:
        ex.finished = True
        self.finished.append(ex)


def exchange(version: str = "1.1", method: str = "GET") -> tuple[Http1Exchange, FakeConn]:
    conn = FakeConn()
    scope = {"method": method, "http_version": version, "path": "/", "headers": []}
    return Http1Exchange(conn, scope, version == "1.1", method == "HEAD"), conn  # type: ignore[arg-type]


def test_small_answer_is_one_write_big_ones_keep_order() -> None:
    async def main() -> None:
        ex, conn = exchange()
        ex.start(200, [(b"content-length", b"%d" % (4 + COALESCE + 4))])
        assert conn.transport.writes == []  # the head is held
        await ex.write(b"body")
        assert conn.transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\nbody" % (4 + COALESCE + 4)]
        big = b"x" * COALESCE
        await ex.write(big)  # straight through
        await ex.write(b"tail")
        await ex.end()
        assert conn.transport.writes[1:] == [big, b"tail"]
        assert conn.finished == [ex] and ex.size == 4 + COALESCE + 4 and not conn.transport.closed

    asyncio.run(main())


def test_head_and_big_first_body_leave_in_order() -> None:
    async def main() -> None:
        ex, conn = exchange()
        ex.start(200, [(b"content-length", b"%d" % COALESCE)])
        await ex.write(b"y" * COALESCE)
        await ex.end()
        assert b"".join(conn.transport.writes) == b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % COALESCE + b"y" * COALESCE

    asyncio.run(main())


def test_no_length_is_chunked_for_http11_and_close_delimited_for_http10() -> None:
    async def main() -> None:
        ex, conn = exchange()
        ex.start(200, [])
        await ex.write(b"abc")
        await ex.end()
        assert b"".join(conn.transport.writes) == (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                                   b"3\r\nabc\r\n0\r\n\r\n")
        ex, conn = exchange("1.0")
        ex.start(200, [])
        await ex.write(b"abc")
        await ex.end()
        assert b"".join(conn.transport.writes) == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc"
        assert not ex.keep_alive

    asyncio.run(main())


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_bodiless_answers_carry_no_body_and_no_framing(method: str, status: int) -> None:
    async def main() -> bytes:
        ex, conn = exchange(method=method)
        ex.start(status, [(b"content-length", b"5")] if status == 200 else [])
        await ex.write(b"hello")
        await ex.end()
        return b"".join(conn.transport.writes)

    out = asyncio.run(main())
    assert out.endswith(b"\r\n\r\n") and b"hello" not in out and b"chunked" not in out


def test_respond_is_one_write_and_a_lost_connection_raises() -> None:
    async def main() -> None:
        ex, conn = exchange()
        await ex.respond(404, [(b"content-length", b"9")], b"no route\n")
        assert conn.transport.writes == [b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nno route\n"]
        ex, conn = exchange()
        ex.start(200, [(b"content-length", b"10")])
        conn.lost = True
        with pytest.raises(ClientGone):
            await ex.write(b"0123456789")

    asyncio.run(main())
