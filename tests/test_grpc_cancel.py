"""A gRPC call the client gives up on is cancelled at the instance too (router/proxy/grpc.py,
router/listen/h2proto.py): the router resets the instance's stream (RST_STREAM CANCEL), so the server's
handler sees `context.is_active()` turn false and its termination callback run, as it would talking to
the client directly (fabio, being grpc-go, propagates the cancellation through the call's context).

Real grpcio client and server through the real router's `proto=grpc` listener (prior-knowledge HTTP/2).
The handlers go quiet once they have sent what they send: the router then waits on the instance, not on a
write to the client, so only the cancellation itself can end the instance's call. Each call records what
its handler observed; the tests assert those events, with generous hang guards only. The last test is in
process: the upstream pool's shared dial outlives a caller that left.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme

from router.proxy.h2client import H2Client, H2Pool
from tests.grpc_instance import instance_and_router
from tests.router_proc import RouterProc

GUARD = 20.0  # a hang guard: far longer than any of this takes, even on a loaded machine


class Call:
    """What the instance's handler observed of one call (the request names it)."""

    def __init__(self) -> None:
        self.terminated = threading.Event()  # the call's done callback ran
        self.stopped = threading.Event()  # the handler saw the call inactive and returned
        self.sent = 0  # messages yielded


CALLS: dict[bytes, Call] = {}


def _wait_inactive(ctx: grpc.ServicerContext, call: Call) -> None:
    deadline = time.monotonic() + GUARD
    while ctx.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not ctx.is_active():
        call.stopped.set()


def _handlers() -> grpc.GenericRpcHandler:
    def stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        """Two messages, then (`quiet-*`) nothing until cancelled, or (`busy-*`) one every 20 ms."""
        call = CALLS[req]
        ctx.add_callback(call.terminated.set)
        quiet = req.startswith(b"quiet")
        if quiet:  # watched from a thread: grpcio does not resume a generator whose call was cancelled, and
            # a client that leaves right after m2 (the dropped-connection test) may beat that resumption
            threading.Thread(target=_wait_inactive, args=(ctx, call), daemon=True).start()
        for _ in range(2):
            call.sent += 1
            yield b"m%d" % call.sent
        if quiet:
            call.stopped.wait(GUARD)
            return
        deadline = time.monotonic() + GUARD
        while ctx.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
            call.sent += 1
            yield b"m%d" % call.sent
        if not ctx.is_active():
            call.stopped.set()

    def slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        call = CALLS[req]
        ctx.add_callback(call.terminated.set)
        _wait_inactive(ctx, call)
        return b"late"

    return grpc.method_handlers_generic_handler("test.Cancel", {
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })


@pytest.fixture(scope="module")
def router() -> Iterator[tuple[int, RouterProc]]:
    server, r, port = instance_and_router(_handlers(), "/test.Cancel", threads=8)
    with r:
        yield port, r
    server.stop(0)


@pytest.fixture
def gport(router: tuple[int, RouterProc]) -> int:
    return router[0]


def cancelled_count(r: RouterProc) -> float:
    """Calls counted with grpc-status 1 (CANCELLED)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(httpx.get(r.ui + "/metrics").text)
               for s in fam.samples if s.name == "consul_router_grpc_status_total" and s.labels.get("code") == "1")


def _start(ch: grpc.Channel, name: bytes) -> tuple[Call, grpc.Call]:
    CALLS[name] = call = Call()
    it = ch.unary_stream("/test.Cancel/Stream")(name, timeout=GUARD * 2)
    assert [next(it), next(it)] == [b"m1", b"m2"]  # flowing through the router
    return call, it


def _cancelled(call: Call, quiet: bool = True) -> None:
    assert call.terminated.wait(GUARD), "the instance's call never ended"
    if quiet:  # (a busy generator is simply not resumed by grpcio once its call is cancelled)
        assert call.stopped.wait(GUARD), "the instance's handler never saw the call inactive"


@pytest.mark.parametrize("kind", ["quiet", "busy"])
def test_a_cancelled_server_stream_is_cancelled_at_the_instance(gport: int, kind: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
        call, it = _start(ch, f"{kind}-cancel".encode())
        it.cancel()
        _cancelled(call, kind == "quiet")
        time.sleep(0.2)  # (a message being made as the cancellation came may still be counted)
        sent = call.sent
        time.sleep(0.3)
        assert call.sent == sent  # it stopped streaming into nowhere
        # the channel (and the router's connection to the instance) still serves calls
        again, it = _start(ch, f"{kind}-again".encode())
        it.cancel()
        _cancelled(again, kind == "quiet")


def test_a_client_that_goes_away_cancels_its_calls_at_the_instance(gport: int) -> None:
    ch = grpc.insecure_channel(f"127.0.0.1:{gport}")
    calls = [_start(ch, f"quiet-gone-{i}".encode())[0] for i in range(3)]
    ch.close()  # the client's connection closes with the three calls open
    for call in calls:
        _cancelled(call)


def test_a_call_past_its_deadline_is_cancelled_at_the_instance(gport: int) -> None:
    CALLS[b"slow"] = call = Call()
    with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Cancel/Slow")(b"slow", timeout=0.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _cancelled(call)


def test_a_dropped_connection_cancels_its_calls_at_the_instance(router: tuple[int, RouterProc]) -> None:
    """The client's TCP connection just closes (no RST_STREAM, no GOAWAY: a crashed client or a lost
    network): every call it had open is cancelled at the instance. Client: h2, prior knowledge."""
    gport, r = router
    before = cancelled_count(r)
    s = socket.create_connection(("127.0.0.1", gport), timeout=GUARD)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    names = [f"quiet-dropped-{i}".encode() for i in range(3)]
    calls = []
    for i, name in enumerate(names):
        CALLS[name] = call = Call()
        calls.append(call)
        sid = 1 + 2 * i
        c.send_headers(sid, [(b":method", b"POST"), (b":path", b"/test.Cancel/Stream"), (b":scheme", b"http"),
                             (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        c.send_data(sid, b"\0" + struct.pack(">I", len(name)) + name, end_stream=True)
    s.sendall(c.data_to_send())
    got = {1: b"", 3: b"", 5: b""}
    while any(len(v) < 2 * 7 for v in got.values()):  # both messages of each call ("m1", "m2", 5-byte prefix)
        data = s.recv(65536)
        assert data, "the router closed the connection"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                got[ev.stream_id] += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        s.sendall(c.data_to_send())
    s.close()
    for call in calls:
        _cancelled(call)
    deadline = time.monotonic() + GUARD
    while cancelled_count(r) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_count(r) == before + 3  # counted as CANCELLED, not as answered


def test_a_caller_that_leaves_mid_dial_does_not_fail_the_others() -> None:
    """Two calls wait on one dial to an instance (router/proxy/h2client.py H2Pool); the first one's client
    leaves (its task cancelled) while the TLS handshake is still held back by the instance: the other call
    still gets the connection once the instance answers."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("up.internal").configure_cert(ctx)
    ctx.set_alpn_protocols(["h2"])
    go = threading.Event()
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    held: list[ssl.SSLSocket] = []

    def serve() -> None:
        c, _ = lsock.accept()
        go.wait(GUARD)  # the handshake waits until the first caller has left
        held.append(ctx.wrap_socket(c, server_side=True))

    threading.Thread(target=serve, daemon=True).start()

    async def main() -> object:
        pool = H2Pool(dial_timeout=GUARD)
        first = asyncio.create_task(pool._conn("127.0.0.1", port, True, "up.internal", False))
        second = asyncio.create_task(pool._conn("127.0.0.1", port, True, "up.internal", False))
        await asyncio.sleep(0.2)  # both wait on the one dial
        first.cancel()
        await asyncio.sleep(0)
        go.set()
        try:
            return await asyncio.wait_for(second, GUARD)
        finally:
            await pool.close()

    try:
        got = asyncio.run(main())
    finally:
        lsock.close()
        for s in held:
            s.close()
    assert isinstance(got, H2Client)
