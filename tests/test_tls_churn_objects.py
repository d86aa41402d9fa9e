"""TLS connections over the ALPN listener protocol (router/listen/alpn.py) leave no SSL object, H2
protocol or nghttp2 session alive once closed, without a garbage collection (which tune_gc makes rare):
their OpenSSL state and uvloop's 256 KiB SSL read buffer go with the connection (docs/datapath.md,
"Memory after bursts of TLS connections"). In process: a loopback TLS server, the fake core and listener
of tests/test_h2_sessions.py, h2 as client."""

from __future__ import annotations

import asyncio
import gc
import ssl

import trustme
import uvloop

from router.listen.alpn import ALPN, Negotiated
from router.listen.h2proto import H2
from router.proxy import nghttp2 as ng
from tests.test_h2_sessions import Listener, one


def test_closed_tls_connections_leave_no_ssl_object_behind() -> None:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(list(ALPN))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.set_alpn_protocols(["h2"])

    def server_ssl_objects() -> int:
        return sum(isinstance(o, ssl.SSLObject) and o.server_side for o in gc.get_objects())

    async def main() -> tuple[int, list[bool], int, int, int, int]:
        loop = asyncio.get_running_loop()
        lst = Listener(loop)
        srv = await loop.create_server(lambda: Negotiated(lst), "127.0.0.1", 0, ssl=server_ctx)  # type: ignore[arg-type]
        port = srv.sockets[0].getsockname()[1]
        before = len(ng.SESSIONS)
        _, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        await asyncio.sleep(0.1)
        while_open = server_ssl_objects()  # the count sees a live connection's SSL object
        w.close()
        got = [await one(port, "/ok", client_ctx) for _ in range(20)]
        for _ in range(50):  # each server side connection_lost seen
            await asyncio.sleep(0.02)
            if not lst.conns:
                break
        await asyncio.sleep(0.1)
        ssl_alive = server_ssl_objects()
        h2_alive = sum(isinstance(o, H2) for o in gc.get_objects())
        left = len(ng.SESSIONS) - before
        srv.close()
        return while_open, got, ssl_alive, h2_alive, left, len(lst.conns)

    gc.collect()
    gc.disable()
    try:
        while_open, got, ssl_alive, h2_alive, left, conns = uvloop.run(main())  # the router's loop
    finally:
        gc.enable()
    assert while_open == 1
    assert got == [True] * 20
    assert (ssl_alive, h2_alive, left, conns) == (0, 0, 0, 0)
