"""The gRPC forwarding pieces that need no listener: grpc-timeout parsing and the HTTP/2 upstream client
(router/proxy/h2client.py) calling a real grpcio server, unary and streaming, trailers included."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from router.proxy.grpc import grpc_timeout, is_grpc
from router.proxy.h2client import H2Pool, UpstreamGone


@pytest.mark.parametrize(("value", "seconds"), [(b"1S", 1.0), (b"100m", 0.1), (b"2M", 120.0), (b"1H", 3600.0),
                                                (b"250000u", 0.25), (b"5n", 5e-9), (b" 3S ", 3.0)])
def test_grpc_timeout(value: bytes, seconds: float) -> None:
    assert grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"1", b"S", b"1s", b"-1S", b"123456789S", b"1.5S"])
def test_malformed_grpc_timeouts_are_ignored(value: bytes) -> None:
    assert grpc_timeout(value) is None


def test_is_grpc() -> None:
    assert is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not is_grpc([(b"content-type", b"application/json")]) and not is_grpc([])


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.set_trailing_metadata((("x-t", "1"),))
        return req[::-1]

    def stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (req * i for i in range(1, 4))

    def fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "go away")

    srv = grpc.server(futures.ThreadPoolExecutor(4))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "U": grpc.unary_unary_rpc_method_handler(unary), "S": grpc.unary_stream_rpc_method_handler(stream),
        "F": grpc.unary_unary_rpc_method_handler(fail)}),))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield port
    srv.stop(0)


def frame(msg: bytes) -> bytes:
    return struct.pack("!BI", 0, len(msg)) + msg


def messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = struct.unpack_from("!I", data, pos + 1)[0]
        out.append(data[pos + 5:pos + 5 + n])
        pos += 5 + n
    return out


async def call(port: int, method: str, msg: bytes, pool: H2Pool) -> tuple[int, list, list[bytes], list]:
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", f"/t.S/{method}".encode()),
            (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    up = await pool.open_stream("127.0.0.1", port, False, "", head)
    await up.write(frame(msg))
    up.end()
    status, headers, ended = await up.response()
    body = b"" if ended else b"".join([d async for d in up.data()])
    return status, headers if ended else (up.trailers or []), messages(body), headers


def test_unary_streaming_and_status_through_the_h2_client(server: int) -> None:
    async def main() -> tuple:
        pool = H2Pool()
        try:
            u = await call(server, "U", b"abc", pool)
            s = await call(server, "S", b"z", pool)
            f = await call(server, "F", b"", pool)
            many = await asyncio.gather(*(call(server, "U", b"%d" % i, pool) for i in range(50)))  # one connection
            return u, s, f, many, len(pool.conns)
        finally:
            await pool.close()

    u, s, f, many, conns = asyncio.run(main())
    assert u[0] == 200 and u[2] == [b"cba"] and (b"grpc-status", b"0") in u[1] and (b"x-t", b"1") in u[1]
    assert s[2] == [b"z", b"zz", b"zzz"]
    assert (b"grpc-status", b"7") in f[1] and (b"grpc-message", b"go away") in f[1]  # trailers-only answer
    assert sorted(m[2][0] for m in many) == sorted(str(i).encode()[::-1] for i in range(50)) and conns == 1


def test_an_unreachable_upstream_fails_the_open() -> None:
    async def main() -> None:
        pool = H2Pool(dial_timeout=2)
        with pytest.raises((OSError, UpstreamGone)):
            await pool.open_stream("127.0.0.1", 1, False, "", [(b":method", b"POST")])

    asyncio.run(main())
