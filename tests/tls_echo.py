"""A TLS echo server on a free loopback port, for the certificate tests: the handshake shows which
certificate the SNI context picked, the echo shows that a connection opened before a swap still works."""

from __future__ import annotations

import asyncio
import ssl


async def echo_server(ctx: ssl.SSLContext) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return srv, srv.sockets[0].getsockname()[1]
