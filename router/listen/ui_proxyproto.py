"""fabio's `pxyproto=true` (and `pxytimeout=`) on `ui.addr`: the admin UI behind a load balancer that sends
a PROXY protocol header, as fabio's admin server accepts it (its listener is the proxy's, ListenTCP).

uvicorn accepts its own connections and cannot read a header first, so with `pxyproto=true` uvicorn binds
nothing (`serve(sockets=[])`) and our acceptor (router/listen/accept.py, the proxy listeners' one) accepts,
reads the header within `pxytimeout` (a connection without one is served directly, as there), and hands
the socket to uvicorn's protocol, TLS included when ui.addr has a `cs=`. The header's source address is
the request's client: the UI's write guard (ui/security.py) judges that address, not the balancer's.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from router.listen.accept import Handler

HANDSHAKE = 10.0  # seconds for a TLS client's handshake, as on the proxy's TLS listeners


def ui_handler(server: uvicorn.Server) -> Handler:
    """The acceptor's handler for the UI: each socket to a new uvicorn protocol of `server` (its http=
    class must be router/listen/ui_deadlines.py's, which takes `client_override`)."""

    async def handle(sock: socket.socket, client: tuple[str, int], local: tuple[str, int]) -> None:
        while not server.started:  # the lifespan state exists once uvicorn has started
            if server.should_exit:
                sock.close()
                return
            await asyncio.sleep(0.05)
        config = server.config

        def protocol() -> asyncio.Protocol:
            proto = config.http_protocol_class(config=config, server_state=server.server_state,  # type: ignore[call-arg]
                                               app_state=server.lifespan.state)
            proto.client_override = client  # type: ignore[attr-defined]
            return proto

        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(protocol, sock, ssl=config.ssl,
                                           ssl_handshake_timeout=HANDSHAKE if config.ssl is not None else None)

    return handle
