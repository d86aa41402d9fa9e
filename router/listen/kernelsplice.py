"""Plain TCP spliced in the kernel: splice(2) moves bytes socket -> pipe -> socket without copying them
into Python, so a `proto=tcp` route runs near the loopback's own speed (bench/tcp_bench.py).

Used when neither side is TLS (TLS-terminated TCP goes through router/listen/splice.py's protocols).
Each direction is a small state machine on the event loop: splice what the source has into a pipe,
then from the pipe into the destination; when the destination is full, stop reading the source and
wait until the destination is writable (so a slow reader costs one pipe, 1 MiB at most). A FIN is passed
on as shutdown(SHUT_WR); when both directions ended, or either fails, both sockets are closed.
`rt=`/`wt=` apply as in splice.py: the client silent for rt, or bytes to it stuck for wt, closes both.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import time
from collections.abc import Callable

PIPE_SIZE = 1 << 20
FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class _Pump:
    """One direction, src -> dst."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket,
                 count: Callable[[int], None] | None, done: Callable[[_Pump, BaseException | None], None]) -> None:
        self.loop, self.src, self.dst, self.count, self.done = loop, src.fileno(), dst.fileno(), count, done
        self.dst_sock = dst
        self.r = self.w = -1  # the pipe, made on the first bytes: an idle connection holds no pipe
        self.pending = 0
        self.size = PIPE_SIZE
        self.eof = False
        self.finished = False
        self.reading = False
        self.writing = False
        self.last_read = time.monotonic()
        self.stuck_since = 0.0

    def start(self) -> None:
        self._read_on()

    def _read_on(self) -> None:
        if not self.reading and not self.finished:
            self.loop.add_reader(self.src, self._readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False

    def _pipe(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default pipe (64 KiB) still works, only in smaller steps
        self.size = fcntl.fcntl(self.w, F_GETPIPE_SZ)

    def _readable(self) -> None:
        if self.w < 0:
            try:
                self._pipe()
            except OSError as e:  # out of file descriptors
                self._finish(e)
                return
        room = self.size - self.pending
        try:
            n = os.splice(self.src, self.w, room, flags=FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            self._finish(e)
            return
        if n == 0:
            self.eof = True
            self._read_off()
        else:
            self.last_read = time.monotonic()
            self.pending += n
            if self.count is not None:
                self.count(n)
        self._flush()

    def _flush(self) -> None:
        """Move what the pipe holds into the destination, as far as it takes it now; read and write
        interest follow: reading while the pipe has room, writing while the destination is full."""
        while self.pending:
            try:
                m = os.splice(self.r, self.dst, self.pending, flags=FLAGS)
            except BlockingIOError:
                break
            except OSError as e:
                self._finish(e)
                return
            self.pending -= m
        if self.pending:
            if not self.writing:
                self.loop.add_writer(self.dst, self._flush)
                self.writing = True
                self.stuck_since = time.monotonic()
            if self.pending >= self.size:
                self._read_off()  # the pipe is full: the source waits until the destination drains
            elif not self.eof:
                self._read_on()
            return
        self.stuck_since = 0.0
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if self.eof:
            try:
                self.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._finish(None)
        else:
            self._read_on()

    def _finish(self, exc: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        self._read_off()
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if self.w >= 0:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = -1
        self.done(self, exc)


async def splice(client: socket.socket, upstream: socket.socket, *, count_tx: Callable[[int], None] | None = None,
                 count_rx: Callable[[int], None] | None = None, read_timeout: float = 0.0,
                 write_timeout: float = 0.0) -> None:
    """Copy both ways until both directions ended (or one failed); then close both sockets."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    ended: list[_Pump] = []

    def done(pump: _Pump, exc: BaseException | None) -> None:
        ended.append(pump)
        if exc is not None or len(ended) == 2:
            for p in (to_up, to_client):
                if not p.finished:
                    p._finish(None)
            if not finished.done():
                finished.set_result(None)

    to_up = _Pump(loop, client, upstream, count_tx, done)  # client -> upstream: fabio's tx
    to_client = _Pump(loop, upstream, client, count_rx, done)  # upstream -> client: rx
    to_up.start()
    to_client.start()
    timer = None
    if read_timeout > 0 or write_timeout > 0:
        tick = min(t for t in (read_timeout, write_timeout) if t > 0) / 4

        def check() -> None:
            nonlocal timer
            if finished.done():
                return
            now = time.monotonic()
            silent = read_timeout > 0 and not to_up.eof and now - to_up.last_read > read_timeout
            stuck = write_timeout > 0 and to_client.stuck_since and now - to_client.stuck_since > write_timeout
            if silent or stuck:
                done(to_up, TimeoutError())
                return
            timer = loop.call_later(tick, check)

        timer = loop.call_later(tick, check)
    try:
        await finished
    finally:
        if timer is not None:
            timer.cancel()
        for p in (to_up, to_client):
            if not p.finished:
                p._finish(None)
        client.close()
        upstream.close()
