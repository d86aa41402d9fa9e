"""Request bodies handed to the proxy without uvicorn's copies: the upload half of the data path.

uvicorn's httptools protocol copies every body byte three times before the app sees it: llhttp's
`on_body` makes a bytes object, `cycle.body += body` appends it to a bytearray, and `receive()` turns
that into bytes again; it also stops reading the socket at 64 KiB buffered. Profiling an upload through
the router put that at ~40% of its CPU (docs/datapath.md), and the upload ran at about half the download
speed. Here:

* a Content-Length body bypasses llhttp once the head is parsed (as router/proxy/upstream.py does for
  responses): the socket's chunks are queued as they are and counted down; at the end a fresh parser
  takes over for the next request on the connection;
* `receive()` returns the queued chunks (joined only when several are waiting), and reading pauses at
  `BODY_HIGH_WATER` buffered bytes instead of 64 KiB.

Chunked bodies still go through llhttp (it strips the framing) but skip the bytearray.
"""

from __future__ import annotations

import collections
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

BODY_HIGH_WATER = 1 << 20  # buffered request-body bytes per connection at which reading pauses


class _BodyCycle(RequestResponseCycle):
    """uvicorn's request cycle with a chunk queue instead of a bytearray (same events, same waiting).

    Requests with a body get this class by `__class__` assignment. Not a bound method stored on the
    instance: that would make every request's cycle a reference cycle, left for the garbage collector,
    and the collections it caused cost ~20% throughput and doubled p99 in an A/B.
    """

    chunks: collections.deque[bytes]
    buffered: int

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        if not chunks:
            body = b""
        elif len(chunks) == 1:
            body = chunks.popleft()
        else:
            body = b"".join(chunks)
            chunks.clear()
        self.buffered = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}


class FastBodyHttpToolsProtocol(HttpToolsProtocol):
    """Mix into the proxy's uvicorn protocol class (router/listen/uvicorn_server.py)."""

    raw_left = 0  # Content-Length body bytes still to come for the current request

    def new_parser(self) -> httptools.HttpRequestParser:
        """The parser for the next request on this connection (request_guard overrides it)."""
        return httptools.HttpRequestParser(self)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle is before:  # an upgrade: uvicorn made no request cycle
            return
        length = -1
        chunked = False
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    length = int(value)  # llhttp accepted the head: one valid length, no transfer-encoding
                except ValueError:
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if length <= 0 and not chunked:
            return  # no body: uvicorn's cycle as it is, nothing to allocate
        cycle.__class__ = _BodyCycle
        cycle.chunks = collections.deque()  # type: ignore[attr-defined]
        cycle.buffered = 0  # type: ignore[attr-defined]
        if length > 0 and not chunked:
            self.raw_left = length  # on_body counts down what arrived with the head

    def on_body(self, body: bytes) -> None:
        if self.raw_left > 0:
            self.raw_left -= len(body)
        self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not isinstance(cycle, _BodyCycle):
            return
        cycle.chunks.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > BODY_HIGH_WATER:
            self.flow.pause_reading()
        cycle.message_event.set()

    def data_received(self, data: bytes) -> None:
        left = self.raw_left
        if left <= 0:
            super().data_received(data)
            return
        self._unset_keepalive_if_required()
        if len(data) > left:  # the body ends inside this read; the rest is the next (pipelined) request
            body, rest = data[:left], data[left:]
        else:
            body, rest = data, b""
        self.raw_left = left - len(body)
        self._deliver(body)
        if self.raw_left == 0:
            self.parser = self.new_parser()  # the old one still waits for the body it never saw
            self.on_message_complete()
            if rest:
                super().data_received(rest)
