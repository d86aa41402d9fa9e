"""Issue 17's second defect: a write to an upstream connection that is already closed.

Docker's userland port proxy accepts a connection and closes it at once when the container behind it is
gone. A request written to such a fresh connection was a 500 under uvloop (RuntimeError from the write)
and a request waiting forever under plain asyncio (the write was dropped silently). Nothing was sent, so
it is a connect failure: `Upstream.start` says so (Stale with written=False) and `request` raises
ConnectFailed, which the proxy retries on another instance for every method.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable

import pytest
import uvloop

from router.proxy.upstream import Upstream
from router.proxy.upstream_errors import ConnectFailed, Stale, UpstreamError
from router.proxy.upstream_request import prepare

LOOPS: dict[str, Callable] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


class Resetter:
    """A listener that accepts and resets every connection at once (SO_LINGER 0)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def reset_pending(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except BlockingIOError:
                return
            self.accepted += 1
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_write_to_a_fresh_connection_already_closed_is_nothing_sent(loop: str) -> None:
    srv = Resetter()

    async def main() -> None:
        up = Upstream(dial_timeout=2)
        prep = prepare("POST", f"http://127.0.0.1:{srv.port}/x", [("host", "t")], b"payload")
        conn = await up.dial(prep.key)
        deadline = time.monotonic() + 5
        while not conn.lost and time.monotonic() < deadline:
            srv.reset_pending()
            await asyncio.sleep(0.01)
        assert conn.lost, "the premise: the connection is closed before we write"
        with pytest.raises(Stale) as info:
            up.start(conn, prep, b"payload")
        assert info.value.written is False  # so a POST may go elsewhere: nothing reached anyone
        await up.close()

    LOOPS[loop](main())
    assert srv.accepted == 1
    srv.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_request_to_an_instance_that_accepts_and_resets_fails_cleanly(loop: str) -> None:
    """Whether the reset comes before or after the write, request() raises one of its own errors (never
    RuntimeError, never hangs): ConnectFailed if nothing was written, else UpstreamError."""
    srv = Resetter()

    async def main() -> list[str]:
        up = Upstream(dial_timeout=2)
        outcomes = []

        async def resetter() -> None:
            while True:
                srv.reset_pending()
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(resetter())
        for _ in range(20):
            try:
                await asyncio.wait_for(up.request("GET", f"http://127.0.0.1:{srv.port}/", [], None), 5)
            except (ConnectFailed, UpstreamError) as e:
                outcomes.append(type(e).__name__)
        task.cancel()
        await up.close()
        return outcomes

    outcomes = LOOPS[loop](main())
    assert len(outcomes) == 20 and set(outcomes) <= {"ConnectFailed", "UpstreamError"}
    srv.close()


def test_arrived_returns_false_and_the_response_still_completes() -> None:
    """Response.arrived(t): False while the headers are late, and the same response then completes."""

    async def main() -> tuple[bool, bool, int, bytes]:
        release = asyncio.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            await release.wait()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()

        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        up = Upstream()
        prep = prepare("GET", f"http://127.0.0.1:{port}/", [], None)
        resp = up.start(await up.dial(prep.key), prep, None)
        early = await resp.arrived(0.05)
        release.set()
        late = await resp.arrived(5)
        body = b"".join([c async for c in resp.content.iter_any()])
        resp.release()
        await up.close()
        srv.close()
        return early, late, resp.status, body

    assert uvloop.run(main()) == (False, True, 200, b"ok")
