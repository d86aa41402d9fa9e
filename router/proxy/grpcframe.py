"""gRPC message sizes on a byte stream (pure): fabio's `proxy.grpcmaxrxmsgsize` / `grpcmaxtxmsgsize`.

A gRPC body is a sequence of length-prefixed messages (1 byte compressed flag, 4 bytes big-endian length,
the message). The router passes the bytes through unchanged (router/proxy/grpc.py), so to refuse a message
over the limit, as fabio's grpc-go server and client do with RESOURCE_EXHAUSTED, it only follows the
5-byte prefixes: per chunk, arithmetic over the lengths, no copy unless a prefix is split between chunks.
The wire length is compared (a compressed message counts compressed).
"""

from __future__ import annotations

PREFIX = 5


class MessageLimit:
    """Follows the messages of one direction of a call; `feed` says what may be passed on."""

    __slots__ = ("limit", "left", "pending")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = 0  # bytes of the current message still to come
        self.pending = b""  # the start of a prefix split between chunks, held back until it is whole

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """-> (the bytes to pass on now, 0 or the length of a message over the limit).

        With a message over the limit, the bytes before its prefix are returned and nothing after: the call
        is to end there. A prefix cut by the chunk's end is held back (returned with the next chunk).
        """
        if self.pending:
            data, self.pending = self.pending + data, b""
        pos, n = 0, len(data)
        while True:
            if self.left:
                step = min(self.left, n - pos)
                pos += step
                self.left -= step
            if pos == n:
                return data, 0
            if n - pos < PREFIX:
                self.pending = data[pos:]
                return data[:pos], 0
            size = int.from_bytes(data[pos + 1:pos + PREFIX], "big")
            if size > self.limit:
                return data[:pos], size
            pos += PREFIX
            self.left = size

    def rest(self) -> bytes:
        """What is held back when the stream ends (a cut prefix: passed on as it is, the peer judges it)."""
        out, self.pending = self.pending, b""
        return out
