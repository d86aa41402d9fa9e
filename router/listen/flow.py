"""Write flow control shared by the client protocols (HTTP/1.1 and HTTP/2): asyncio calls
pause_writing/resume_writing as the transport's buffer crosses its marks, and a handler that has
written awaits `drain()` until the client has taken enough. This is what bounds a slow reader."""

from __future__ import annotations

import asyncio

from router.proxy.exchange import ClientGone


class WriteFlow:
    """Mixed into an asyncio.Protocol that sets `loop`, `lost`, `write_paused` and `drain_waiter`."""

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
