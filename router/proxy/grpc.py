"""gRPC routes (`proto=grpc`: HTTP/2 without TLS to the instance, `proto=grpcs`: with TLS, SNI and
verification by `grpcservername=`): each gRPC call arriving on an HTTP/2 stream is forwarded as one
HTTP/2 stream to the instance, headers, messages and trailers passed through as they come, in both
directions and in any of gRPC's four shapes (unary, client-, server- and bidirectional streaming).

Why not the HTTP/1.1 upstream pool: gRPC needs HTTP/2 end to end (trailers carry `grpc-status`, and
streams interleave). One client connection per instance is kept and multiplexed (router/proxy/h2client.py).

A call's `grpc-timeout` is passed on, and also enforced here: when it runs out before the instance has
answered, the upstream stream is cancelled and the client gets `grpc-status: 4` (DEADLINE_EXCEEDED), as a
gRPC server would answer. A call the client cancels (RST_STREAM) or leaves (its connection closed) has
its task cancelled by the listener, and the instance's stream is reset with CANCEL, so the server's handler
sees the cancellation as it would from the client itself. Messages over `proxy.grpcmaxrxmsgsize` / `grpcmaxtxmsgsize` end the call with
RESOURCE_EXHAUSTED (8), as fabio's grpc-go proxy does (router/proxy/grpcframe.py follows the message
prefixes without copying the bytes). Flow control holds both ways: client messages are taken (and their window
given back) only as fast as the instance's window allows, and the instance's as fast as the client reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from bisect import bisect_left
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any, Protocol

from router.proxy.grpcframe import MessageLimit
from router.proxy.h2client import HIGH as UPSTREAM_HIGH
from router.proxy.h2client import H2Pool, UpstreamGone
from router.proxy.stats import BOUNDS, CLIENT_GONE

log = logging.getLogger("router.grpc")

Headers = list[tuple[bytes, bytes]]
_SKIP = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes) -> float | None:
    """`grpc-timeout: 100m` -> 0.1 (seconds); None when absent or malformed (gRPC's own rule: ignore)."""
    m = _TIMEOUT.fullmatch(value.strip())
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def is_grpc(headers: Headers) -> bool:
    for n, v in headers:
        if n == b"content-type":
            return v.startswith(b"application/grpc")
    return False


class Downstream(Protocol):
    """The client's side of a call: an HTTP/2 stream (router/listen/h2proto.py H2Stream)."""

    sent: bool

    def body(self) -> AsyncIterator[bytes]: ...
    def whole_body(self, limit: int) -> bytes | None: ...
    def start(self, status: int, headers: Headers) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self) -> None: ...
    async def end_with_trailers(self, trailers: Headers) -> None: ...


class GrpcStats:
    """fabio's grpc.* metrics: connections on gRPC listeners (grpc.conn), calls and their durations
    (grpc.requests), calls without a route (grpc.noroute), and the grpc-status of each call (its grpc.status)."""

    def __init__(self) -> None:
        self.conn = 0
        self.requests = 0
        self.noroute = 0
        self.status: dict[str, int] = {}
        self.seconds = 0.0  # sum of the call durations
        self.buckets = [0] * (len(BOUNDS) + 1)  # per bucket of router/proxy/stats.py's BOUNDS, not cumulative

    def answered(self, code: str) -> None:
        self.status[code] = self.status.get(code, 0) + 1

    def took(self, seconds: float) -> None:
        self.seconds += seconds
        self.buckets[bisect_left(BOUNDS, seconds)] += 1


class TooLarge(Exception):
    """A message over proxy.grpcmaxrxmsgsize / grpcmaxtxmsgsize: the call ends with RESOURCE_EXHAUSTED."""


FABIO_MAX_MSG = 4 * 1024 * 1024  # fabio's default for both limits


class GrpcProxy:
    def __init__(self, dial_timeout: float = 30.0, max_rx: int = FABIO_MAX_MSG, max_tx: int = FABIO_MAX_MSG) -> None:
        self.pool = H2Pool(dial_timeout=dial_timeout)
        self.stats = GrpcStats()
        self.max_rx = max_rx  # fabio: its server's MaxRecvMsgSize and its upstream client's MaxCallRecvMsgSize
        self.max_tx = max_tx  # fabio: its server's MaxSendMsgSize

    async def no_route(self, down: Downstream) -> None:
        """A gRPC call no route matches: fabio's gRPC server answers NOT_FOUND and counts grpc.noroute."""
        self.stats.noroute += 1
        await self._status(down, "5", b"no route found")

    async def forward(self, scope: dict, down: Downstream, target: Any, route_stats: Any = None) -> None:
        """One call to `target` (a table Target with scheme grpc or grpcs), timed for grpc.requests and, as
        fabio's target timer, for the route's own counters (`route_stats`, router/proxy/stats.py)."""
        t0 = perf_counter()
        status = 200
        try:
            status = await self._forward(scope, down, target)
        except asyncio.CancelledError:  # the client reset the call or left (router/listen/h2proto.py):
            status = CLIENT_GONE  # _call has reset the instance's stream (CANCEL), as grpc-go's proxying does
            self.stats.answered("1")  # CANCELLED
            raise
        finally:
            took = perf_counter() - t0
            self.stats.took(took)
            if route_stats is not None:
                route_stats.record(status, took)

    async def _forward(self, scope: dict, down: Downstream, target: Any) -> int:
        """-> the HTTP status the call counts as on its route: 200, 504 past its deadline, 502 unavailable."""
        self.stats.requests += 1
        tls = target.scheme == "grpcs"
        servername = target.opts.get("grpcservername", "") or target.host
        authority = b""
        out: Headers = []
        deadline = None
        for n, v in scope["headers"]:
            if n == b"host":
                authority = v
            elif n not in _SKIP:
                out.append((n, v))
                if n == b"grpc-timeout":
                    deadline = grpc_timeout(v)
        path = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        head = [(b":method", scope["method"].encode()), (b":scheme", b"https" if tls else b"http"),
                (b":path", path), (b":authority", authority or f"{target.host}:{target.port}".encode()), *out]
        try:
            if deadline is not None:
                async with asyncio.timeout(deadline):  # (wait_for would run the call in a task of its own)
                    await self._call(head, down, target, tls, servername)
            else:
                await self._call(head, down, target, tls, servername)
        except TimeoutError:
            await self._status(down, "4", b"deadline exceeded in the router")
            return 504
        except TooLarge as e:
            log.info("grpc %s to %s:%s: %s", scope["path"], target.host, target.port, e)
            await self._status(down, "8", str(e).encode(), after_headers=True)
        except (UpstreamGone, OSError) as e:
            log.warning("grpc %s to %s:%s: %s", scope["path"], target.host, target.port, e)
            await self._status(down, "14", f"upstream unavailable: {e}".encode())
            return 502
        return 200

    async def _status(self, down: Downstream, code: str, message: bytes, after_headers: bool = False) -> None:
        self.stats.answered(code)
        if down.sent and not after_headers:
            return  # headers went out already: the stream is reset instead (by the caller's end)
        if not down.sent:
            down.start(200, [(b"content-type", b"application/grpc")])
        await down.end_with_trailers([(b"grpc-status", code.encode()), (b"grpc-message", message)])

    async def _call(self, head: Headers, down: Downstream, target: Any, tls: bool, servername: str) -> None:
        up = await self.pool.open_stream(target.host, target.port, tls, servername, head,
                                         verify=target.opts.get("tlsskipverify", "").lower() != "true")

        too_large: list[TooLarge] = []
        rx, tx = MessageLimit(self.max_rx), MessageLimit(min(self.max_rx, self.max_tx))

        async def forward(chunk: bytes) -> bool:
            ok, big = rx.feed(chunk)
            if ok:
                await up.write(ok)
            if big:  # fabio's server refuses it: the instance's stream is cancelled, the client told
                too_large.append(TooLarge(f"grpc: received message larger than max ({big} vs. {rx.limit})"))
                up.cancel()
                up.fail("request message too large")
            return not big

        async def requests() -> None:
            async for chunk in down.body():
                if not await forward(chunk):
                    return
            if rest := rx.rest():
                await up.write(rest)
            up.end()

        whole = down.whole_body(UPSTREAM_HIGH)
        if whole is not None:  # unary and server-streaming calls: the request is all here already and fits
            pump = None  # the instance's windows, so it is sent at once, without a task of its own
            if await forward(whole):
                if rest := rx.rest():
                    await up.write(rest)
                up.end()
        else:
            pump = asyncio.create_task(requests())
        try:
            try:
                status, headers, ended = await up.response()
            except UpstreamGone:
                if too_large:
                    raise too_large[0] from None
                raise
            down.start(status, headers)
            if ended:  # trailers-only: the status is in the headers
                self.stats.answered(_code(headers))
                await down.end()
                return
            try:
                async for data in up.data():
                    ok, big = tx.feed(data)
                    if ok:
                        await down.write(ok)
                    if big:
                        raise TooLarge(f"grpc: received message larger than max ({big} vs. {self.max_rx})"
                                       if big > self.max_rx else
                                       f"grpc: trying to send message larger than max ({big} vs. {self.max_tx})")
            except UpstreamGone:
                if too_large:
                    raise too_large[0] from None
                raise
            if rest := tx.rest():
                await down.write(rest)
            trailers = up.trailers or []
            self.stats.answered(_code(trailers))
            if trailers:
                await down.end_with_trailers(trailers)
            else:
                await down.end()
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            up.cancel()  # nothing if it ended; RST_STREAM CANCEL if the client left or the deadline hit

    async def close(self) -> None:
        await self.pool.close()


def _code(headers: Headers) -> str:
    for n, v in headers:
        if n == b"grpc-status":
            return v.decode("ascii", "replace")
    return "unknown"
