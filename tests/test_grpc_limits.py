"""gRPC limits the router itself enforces, through the real router on a `proto=grpc` listener:

- `proxy.grpcmaxrxmsgsize` / `grpcmaxtxmsgsize` (fabio passes them to its grpc-go proxy): a larger message
  ends the call with RESOURCE_EXHAUSTED, and a request message over the limit never reaches the instance.
  Client and instance are grpcio.
- `grpc-timeout`: when it runs out, the router cancels the upstream stream (the instance sees RST_STREAM
  CANCEL) and answers DEADLINE_EXCEEDED. Asserted on what the instance saw and on the router's own answer,
  with a client (python-hyper h2 on a socket) and an instance (h2 too) that never act on the deadline
  themselves, so nobody but the router can have enforced it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from router.proxy.grpcframe import MessageLimit
from tests.grpc_instance import instance_and_router
from tests.router_proc import RouterProc, free_port

RX, TX = 32 * 1024, 16 * 1024
CALLS: dict[str, int] = {}


# ----------------------------------------------------------------------------- the frame follower (pure)

def frame(size: int) -> bytes:
    return b"\0" + size.to_bytes(4, "big") + b"x" * size


@pytest.mark.parametrize(("chunks", "passed", "big"), [
    ([frame(10) + frame(100)], frame(10) + frame(100), 0),
    ([frame(100)], frame(100), 0),  # exactly the limit
    ([frame(10) + frame(101)], frame(10), 101),  # stops before the prefix of the message over the limit
    ([frame(10)[:3], frame(10)[3:]], frame(10), 0),  # a prefix split between chunks is held back, then passed
    ([frame(10) + frame(101)[:2], frame(101)[2:]], frame(10), 101),
    ([frame(50)[:20], frame(50)[20:] + frame(0)], frame(50) + frame(0), 0),  # empty messages are fine
    ([b"\0\0\0"], b"", 0),  # a cut prefix at the end: held back (rest() passes it on)
])
def test_message_limit(chunks: list[bytes], passed: bytes, big: int) -> None:
    lim = MessageLimit(100)
    out, seen = b"", 0
    for c in chunks:
        ok, seen = lim.feed(c)
        out += ok
        if seen:
            break
    assert (out, seen) == (passed, big)


# ----------------------------------------------------------------------------- message sizes, grpcio both ends

def _handlers() -> grpc.GenericRpcHandler:
    def echo(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        CALLS["echo"] = CALLS.get("echo", 0) + 1
        return b"ok:%d" % len(req)

    def sized(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return b"y" * int(req)

    def bidi(it: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for m in it:
            yield b"got %d" % len(m)

    return grpc.method_handlers_generic_handler("test.Size", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Sized": grpc.unary_unary_rpc_method_handler(sized),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


@pytest.fixture(scope="module")
def sized_router() -> Iterator[int]:
    big = [("grpc.max_receive_message_length", 1 << 24), ("grpc.max_send_message_length", 1 << 24)]
    srv, r, gport = instance_and_router(_handlers(), "/test.Size", "-proxy.grpcmaxrxmsgsize", str(RX), "-proxy.grpcmaxtxmsgsize", str(TX),
                                         options=big)
    with r:
        yield gport
    srv.stop(0)


def _channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 24),
                                                              ("grpc.max_send_message_length", 1 << 24)])


def test_request_messages_over_grpcmaxrxmsgsize(sized_router: int) -> None:
    with _channel(sized_router) as ch:
        echo = ch.unary_unary("/test.Size/Echo")
        assert echo(b"a" * RX, timeout=10) == b"ok:%d" % RX  # at the limit: through
        before = CALLS.get("echo", 0)
        with pytest.raises(grpc.RpcError) as e:
            echo(b"a" * (RX + 1), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details() == f"grpc: received message larger than max ({RX + 1} vs. {RX})"
        assert CALLS.get("echo", 0) == before  # the instance never got the message
        assert echo(b"small", timeout=10) == b"ok:5"  # the connection and the route still serve


@pytest.mark.parametrize(("size", "details"), [
    (TX, None),
    (TX + 1, f"grpc: trying to send message larger than max ({TX + 1} vs. {TX})"),
    (RX + 1, f"grpc: received message larger than max ({RX + 1} vs. {RX})"),  # fabio's upstream client refuses it
])
def test_response_messages_over_the_limits(sized_router: int, size: int, details: str | None) -> None:
    with _channel(sized_router) as ch:
        sized = ch.unary_unary("/test.Size/Sized")
        if details is None:
            assert len(sized(str(size).encode(), timeout=10)) == size
            return
        with pytest.raises(grpc.RpcError) as e:
            sized(str(size).encode(), timeout=10)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, details)


def test_a_stream_ends_at_its_first_message_over_the_limit(sized_router: int) -> None:
    with _channel(sized_router) as ch:
        got: list[bytes] = []
        with pytest.raises(grpc.RpcError) as e:
            for m in ch.stream_stream("/test.Size/Bidi")(iter([b"a" * 10, b"b" * 20, b"c" * (RX + 5)]), timeout=10):
                got.append(m)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert got == [b"got 10", b"got 20"][:len(got)]  # the messages before it went through (as they came)


# ----------------------------------------------------------------------------- grpc-timeout, enforced by the router

class SilentInstance:
    """An HTTP/2 server that takes calls, never answers and ignores grpc-timeout; it records resets."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[dict[bytes, bytes]] = []
        self.resets: list[h2.errors.ErrorCodes] = []
        self.reset_seen = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        h.initiate_connection()
        conn.sendall(h.data_to_send())
        with conn:
            while data := conn.recv(65536):
                for ev in h.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.requests.append(dict(ev.headers))
                    elif isinstance(ev, h2.events.StreamReset):
                        self.resets.append(ev.error_code)
                        self.reset_seen.set()
                conn.sendall(h.data_to_send())

    def close(self) -> None:
        self.sock.close()


def raw_call(port: int, path: str, timeout_header: bytes) -> dict[bytes, bytes]:
    """One gRPC call by hand (h2 on a socket): the client never cancels; -> the headers and trailers it got."""
    h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        h.initiate_connection()
        h.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                           (b":authority", b"grpc.test"), (b"content-type", b"application/grpc"),
                           (b"te", b"trailers"), (b"grpc-timeout", timeout_header)])
        h.send_data(1, frame(3), end_stream=True)
        s.sendall(h.data_to_send())
        got: dict[bytes, bytes] = {}
        while True:
            data = s.recv(65536)
            assert data, "the router closed the connection without ending the call"
            for ev in h.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    got.update(dict(ev.headers))
                if isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    return got
            s.sendall(h.data_to_send())


def test_the_router_enforces_grpc_timeout_and_cancels_the_upstream_call() -> None:
    inst = SilentInstance()
    gport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f'route add silent /test.Silent grpc://127.0.0.1:{inst.port} opts "proto=grpc"',
                   env={"ROUTER_LISTENER": "own"})
    r.flags[1] += f",127.0.0.1:{gport};proto=grpc"
    try:
        with r:
            got = raw_call(gport, "/test.Silent/Wait", b"300m")
            assert got[b"grpc-status"] == b"4" and got[b"grpc-message"] == b"deadline exceeded in the router", got
            assert inst.reset_seen.wait(10), "the instance saw no RST_STREAM"
            assert inst.resets == [h2.errors.ErrorCodes.CANCEL]
            assert [q[b"grpc-timeout"] for q in inst.requests] == [b"300m"]  # passed on, too
    finally:
        inst.close()


# ----------------------------------------------------------------------------- proxy.grpcshutdowntimeout

def test_open_grpc_streams_get_grpcshutdowntimeout_at_a_graceful_stop() -> None:
    """At a graceful stop an open bidi stream goes on (a message sent after SIGTERM is still answered), and a
    stream that never ends does not hold the stop: after proxy.grpcshutdowntimeout its connection is closed
    (fabio: GracefulStop of its gRPC server bounded by it, then Stop)."""
    import queue
    import signal
    import subprocess

    srv, r, gport = instance_and_router(_handlers(), "/test.Size", "-proxy.grpcshutdowntimeout", "3s")
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def messages() -> Iterator[bytes]:
        while (m := outbox.get(timeout=30)) is not None:  # the client never half-closes on its own
            yield m

    try:
        with r, _channel(gport) as ch:
            call = ch.stream_stream("/test.Size/Bidi")(messages(), timeout=30)
            outbox.put(b"first")
            assert next(call) == b"got 5"  # the stream is open through the router
            assert r.proc is not None
            r.proc.send_signal(signal.SIGTERM)
            outbox.put(b"after sigterm")
            assert next(call) == b"got 13"  # still served during the grace
            try:
                code = r.proc.wait(15)  # a hang guard: the grace is 3 s
            except subprocess.TimeoutExpired:
                raise AssertionError("the open stream held the router's stop:\n" + r.output()) from None
            assert code == 0
            with pytest.raises(grpc.RpcError) as e:
                next(call)
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL)
    finally:
        outbox.put(None)
        srv.stop(0)


def test_a_stream_whose_instance_goes_away_ends_for_the_client() -> None:
    """The instance dies after the answer's headers: the client's stream is reset at once (it was left open
    until the client's own deadline)."""
    import queue

    srv, r, gport = instance_and_router(_handlers(), "/test.Size")
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def messages() -> Iterator[bytes]:
        while (m := outbox.get(timeout=30)) is not None:
            yield m

    try:
        with r, _channel(gport) as ch:
            call = ch.stream_stream("/test.Size/Bidi")(messages(), timeout=20)
            outbox.put(b"one")
            assert next(call) == b"got 3"
            srv.stop(0)  # the instance goes away mid-stream
            with pytest.raises(grpc.RpcError) as e:
                next(call)
            assert e.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, e.value  # ended by the router, not by the deadline
    finally:
        outbox.put(None)
        srv.stop(0)
