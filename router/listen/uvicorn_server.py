"""uvicorn for the admin UI on ui.addr (Starlette): per-request cost matters less there. The proxy port is
served by our own listener (router/listen/server.py, http1.py)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import uvicorn


class Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to us: two servers share one process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: object, addr: tuple[str, int], http: object = "httptools", ws: object = "none",
                    **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=addr[0],
        port=addr[1],
        loop="none",
        http=http,  # type: ignore[arg-type]
        ws=ws,
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the peer address is the socket's: X-Forwarded-* must not rewrite it (allow=, XFF)
        date_header=False,
        **extra,
    )


def with_ssl(config: uvicorn.Config, ctx: ssl.SSLContext) -> uvicorn.Config:
    """HTTPS on the UI with our own context: uvicorn builds one only from a key and a certificate file, while
    ours (router/cert/) picks the certificate by SNI and takes replaced certificates without a restart.
    uvicorn's load() would overwrite `ssl`, so it runs first (serve() skips a loaded config)."""
    config.load()
    config.ssl = ctx
    return config
