"""fabio's `rt=`/`wt=` on `ui.addr`: read and write deadlines for the admin UI's connections (uvicorn).

fabio serves its UI with Go's http.Server and the listener's ReadTimeout/WriteTimeout, as it serves the
proxy (admin/server.go, proxy.ListenAndServeHTTP). uvicorn has neither, so the UI gets uvicorn's own
HTTP/1.1 protocol with the same rule our proxy listener applies (router/listen/server.py set_timeouts): a
request, head and body, must arrive within `rt` of its first byte (the first one within `rt` of the
connection), and its answer be written within `wt` of the end of its head; past either, the connection is
dropped (aborted: nothing more is read or written, as a Go deadline). A connection waiting between
requests has no read deadline: that is `it=`, uvicorn's keep-alive timeout.

One timer per connection with a deadline, armed at the nearest one: the UI serves few requests, and a
connection without `rt=`/`wt=` pays nothing.

The same class carries the client address a PROXY protocol header named (`pxyproto=true` on ui.addr,
router/listen/ui_proxyproto.py): uvicorn takes the client from the socket, so `client_override` replaces it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with per-request read and write deadlines (see the module docstring).
    Subclassed per server by :func:`with_deadlines`, which sets the two class attributes."""

    read_timeout: float = 0.0  # seconds, 0 = none
    write_timeout: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_by = 0.0  # loop.time() deadlines, 0 = none
        self.write_by = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.client_override: tuple[str, int] | None = None  # from a PROXY header, set before connection_made

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client_override is not None:
            self.client = self.client_override
        if self.read_timeout:
            self.read_by = self.loop.time() + self.read_timeout
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.read_by = self.write_by = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.read_timeout:
            self.read_by = self.loop.time() + self.read_timeout
            self._arm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.write_timeout:
            self.write_by = self.loop.time() + self.write_timeout
            self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.read_by = 0.0

    def on_response_complete(self) -> None:
        self.write_by = 0.0
        super().on_response_complete()

    def _arm(self) -> None:
        """The timer at the nearest deadline (an earlier one replaces it; a later one waits for it)."""
        due = min(t for t in (self.read_by, self.write_by) if t > 0)
        if self.timer is not None:
            if self.timer.when() <= due:
                return
            self.timer.cancel()
        self.timer = self.loop.call_at(due, self._expire)

    def _expire(self) -> None:
        self.timer = None
        now = self.loop.time()
        if 0.0 < self.read_by <= now or 0.0 < self.write_by <= now:
            self.read_by = self.write_by = 0.0
            if self.transport is not None and not self.transport.is_closing():
                self.transport.abort()
        elif self.read_by > 0 or self.write_by > 0:  # moved on since the timer was armed
            self._arm()


def with_deadlines(read_timeout: float, write_timeout: float, always: bool = False) -> type[DeadlineProtocol] | None:
    """The protocol class for uvicorn's `http=` that applies these deadlines; None if both are 0 (uvicorn's
    own protocol then, untouched) unless `always` (the PROXY protocol needs `client_override`)."""
    if read_timeout <= 0 and write_timeout <= 0 and not always:
        return None
    return type("UIDeadlineProtocol", (DeadlineProtocol,), {"read_timeout": max(read_timeout, 0.0),
                                                            "write_timeout": max(write_timeout, 0.0)})
