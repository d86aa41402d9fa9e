"""Request body size limits: the route option ``maxbody=`` and ``proxy.maxbodybytes`` (the default).

A request whose ``Content-Length`` is above the limit is answered 413 before the upstream is contacted.
A chunked body is counted while it streams up: the moment it passes the limit the upstream connection
is aborted (the upstream has seen at most the limit, never a complete request) and the client gets 413.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

__all__ = ["BodyTooLarge", "declared_length", "limited"]


class BodyTooLarge(Exception):
    """The request body passed its route's limit while streaming up."""


def declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The request's Content-Length, or -1 without one (the guard has refused malformed ones already)."""
    for n, v in headers:
        if n == b"content-length":
            v = v.strip()
            return int(v) if v.isdigit() else -1
    return -1


async def limited(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
        yield chunk
