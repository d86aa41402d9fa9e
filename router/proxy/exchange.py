"""How the proxy core answers one request: the interface every listener protocol implements.

The core (`ProxyApp.serve` in router/proxy/handler.py) is given two things per request:

* the request record, a plain dict with the key names ASGI made familiar (`method`, `path` (decoded),
  `raw_path`, `query_string`, `headers` (lower-case name, value) bytes pairs, `client`, `server`,
  `scheme`, `http_version`). The listener fills it straight from its parser; no ASGI message passes.
* an :class:`Exchange`, which the core uses to read the request body and write the answer.

The HTTP/1.1 listener (router/listen/http1.py) implements it on one connection; an HTTP/2 stream, a
TLS connection or a connection behind the PROXY protocol implement the same five calls, so route lookup,
picking, headers, the upstream pool, the access log and the counters exist once.

Rules an implementation keeps:

* `start()` only records the head; nothing is written before the first `write()` or `end()`, so a small
  answer leaves in one write.
* `write()` waits while the client's write buffer is above the listener's high-water mark: that wait is
  what stops the core reading the upstream, so a client that reads slowly bounds what is buffered for it.
* `body()` is the request body as an async iterator; it raises :class:`ClientGone` when the client leaves
  before its body ended. `Expect: 100-continue` is answered on its first read, never before.
* `status` and `size` (body bytes written) are readable afterwards: the access log uses them.
* A listener that learns its client left while the core waits on the upstream (an HTTP/2 stream reset,
  or its connection closed) may set the exchange's `gone` and cancel the request's task: the core then
  ends that exchange as on :class:`ClientGone` (`client_left`), instead of waiting for an answer nobody
  reads.

An exchange may also be a :class:`Sink` (the HTTP/1.1 one is): then the core streams an upstream answer
through `write_now()` from the upstream connection's read callbacks, without a wake-up of its task per read
(router/proxy/upstream_response.py, `Response.relay`). The bound is the same as `write()`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol


class ClientGone(Exception):
    """The client disconnected while we were reading its body."""


Headers = list[tuple[bytes, bytes]]


def client_left(out: object) -> bool:
    """Whether a cancellation of the current task is the listener saying the client left (`out.gone`):
    then it is taken back (uncancel) and the caller ends the request as on ClientGone (counted and logged
    as 499, the upstream exchange closed). Any other cancellation (a shutdown) is left to propagate."""
    if not getattr(out, "gone", False):
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


class Exchange(Protocol):
    status: int
    size: int

    def body(self) -> AsyncIterator[bytes]: ...

    def start(self, status: int, headers: Headers) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """A whole answer at once (errors, redirects, no-route pages)."""
        ...


class Sink(Protocol):
    """Where an upstream answer's body can be written from a callback, without awaiting each write."""

    def write_now(self, data: bytes) -> bool:
        """Write `data` now (framed as `write()` would); False when the client's write buffer is not empty
        afterwards (or the client was just found to read slowly), so the caller stops until `writable()`
        and reads less at a time. Raises ClientGone when the client left."""
        ...

    async def writable(self) -> None:
        """Wait until the client's write buffer is empty again (raises ClientGone when the client left)."""
        ...
