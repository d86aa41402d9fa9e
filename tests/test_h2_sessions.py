"""The HTTP/2 listener's nghttp2 sessions (router/proxy/nghttp2.py) end with their connections: a
connection closed after its answer, or dropped by the client mid-answer, leaves no session reachable from
the callbacks' table and no H2 protocol object alive, without waiting for a garbage collection (which the
router's tune_gc makes rare). In process: the H2 protocol on a loopback server, a fake core, h2 as client.
"""

from __future__ import annotations

import asyncio
import gc
import ssl

import h2.config
import h2.connection
import h2.events

from router.listen.h2proto import H2
from router.proxy import nghttp2 as ng


class Core:
    async def serve(self, scope: dict, s) -> None:  # type: ignore[no-untyped-def]
        if scope["path"] == "/slow":
            await asyncio.sleep(0.5)  # the client leaves before this ends (the answer then finds it gone)
        await s.respond(200, [(b"content-type", b"text/plain")], b"hi")


class Listener:
    core = Core()
    max_head = 65536
    deadlines: dict = {}
    now = 0.0
    requests = 0
    grpc = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: set = set()
        self.timed: set = set()


def request(path: str) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"), (b":authority", b"x")]


async def one(port: int, path: str, tls: ssl.SSLContext | None = None) -> bool:
    """One request on its own connection (over TLS with `tls`, which must negotiate h2); True when its answer
    arrived (False: dropped before it did)."""
    if tls is None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    else:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="localhost")
        assert w.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.send_headers(1, request(path), end_stream=True)
    w.write(c.data_to_send())
    try:
        async with asyncio.timeout(0.2 if path == "/slow" else 5):
            while True:
                data = await r.read(65536)
                assert data, "the server closed the connection"
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.StreamEnded):
                        return True
                w.write(c.data_to_send())
    except TimeoutError:
        return False
    finally:
        w.close()


def test_closed_connections_leave_no_session_behind() -> None:
    async def main() -> tuple[list[bool], int, int, int]:
        loop = asyncio.get_running_loop()
        lst = Listener(loop)
        srv = await loop.create_server(lambda: H2(lst), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        before = len(ng.SESSIONS)
        got = [await one(port, "/slow" if i % 4 == 3 else "/ok") for i in range(20)]
        await asyncio.sleep(0.8)  # each connection_lost seen, the last slow answer's task ended
        alive = sum(isinstance(o, H2) for o in gc.get_objects())
        left = len(ng.SESSIONS) - before
        srv.close()
        return got, alive, left, len(lst.conns)

    gc.disable()
    try:
        got, alive, left, conns = asyncio.run(main())
    finally:
        gc.enable()
    assert got.count(True) == 15 and got.count(False) == 5  # 15 answered, 5 dropped mid-answer
    assert (alive, left, conns) == (0, 0, 0)
