"""Write flow control shared by the client protocols (HTTP/1.1 and HTTP/2): asyncio calls
pause_writing/resume_writing as the transport's buffer crosses its marks, and a handler that has
written awaits `drain()` until the client has taken enough. This is what bounds a slow reader."""

from __future__ import annotations

import asyncio

from router.proxy.exchange import ClientGone


class WriteFlow:
    """Mixed into an asyncio.Protocol that sets `loop`, `lost`, `write_paused` and `drain_waiter`."""

    __slots__ = ()  # the attributes are the protocol's (Http1's slots)

    loop: asyncio.AbstractEventLoop
    lost: bool
    write_paused: bool
    drain_waiter: asyncio.Future[None] | None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        if self.lost:
            raise ClientGone()
        w = self.drain_waiter
        if w is None or w.done():
            w = self.drain_waiter = self.loop.create_future()
        await w


class _Gone:
    """What a protocol holds as its transport once the connection is lost. The real one is let go at
    once: on a TLS connection it holds the SSL object (OpenSSL's buffers, tens of KiB), and the
    protocol sits in reference cycles (its parser, its exchanges) that only the cyclic collector frees,
    which router/run/workers.py's tune_gc makes rare: RSS grew by ~20 KiB per closed TLS connection
    (bench/tls_bench.py). Every call is a no-op; code that still writes has checked `lost` first."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: object) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


GONE = _Gone()
