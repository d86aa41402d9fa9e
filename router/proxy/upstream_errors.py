"""The upstream client's failures, in the terms the proxy decides on: whether another instance may be
tried (ConnectFailed, Stale with written=False), or the answer is a 504 (UpstreamTimeout) or 502
(UpstreamError). A module of their own so the connection, the response and the pool raise the same
classes and callers (router/proxy/attempts.py, registry/consul/transport.py) import them without the pool.
"""

from __future__ import annotations


class ConnectFailed(Exception):
    """The upstream could not be connected to: nothing was sent, so another instance may be tried."""


class UpstreamTimeout(Exception):
    """The upstream did not answer in time (504)."""


class UpstreamError(Exception):
    """The upstream connection broke or answered garbage (502)."""


class Stale(Exception):
    """A connection died before any byte of the response came back. `written`: the request (or part of
    it) had been written, so the upstream may have acted on it; if not, nothing was sent."""

    def __init__(self, text: str = "connection closed before any response", written: bool = True) -> None:
        super().__init__(text)
        self.written = written



# What the upstream side can raise once a try is under way: the instance's failure, not the proxy's.
UPSTREAM_FAILURES = (Stale, UpstreamError, UpstreamTimeout)
