"""gRPC through the real router: a grpcio server behind `proto=grpc` (and `proto=grpcs`) routes, a grpcio
client on a TLS listener (HTTP/2 by ALPN) and on a `proto=grpc` listener; unary and the three streaming
shapes, status and trailers passed through, deadlines (grpc-timeout) respected.

Messages are raw bytes (generic handlers, no protobuf): the router never looks inside them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
import trustme

from tests.grpc_instance import instance_and_router
from tests.router_proc import RouterProc, free_port


def _handlers() -> grpc.GenericRpcHandler:
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        md = dict(ctx.invocation_metadata())
        ctx.set_trailing_metadata((("x-trailer", "t-" + md.get("x-client", "")),))
        return b"echo:" + req

    def server_stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(5):
            yield req + str(i).encode()

    def client_stream(it: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        return b"+".join(it)

    def bidi(it: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
        for m in it:
            yield m.upper()

    def slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        time.sleep(3)
        return b"late"

    def fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    return grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def upstreams(ca: trustme.CA) -> Iterator[tuple[int, int]]:
    plain = grpc.server(futures.ThreadPoolExecutor(8))
    plain.add_generic_rpc_handlers((_handlers(),))
    p1 = plain.add_insecure_port("127.0.0.1:0")
    secure = grpc.server(futures.ThreadPoolExecutor(8))
    secure.add_generic_rpc_handlers((_handlers(),))
    leaf = ca.issue_cert("echo.internal")
    creds = grpc.ssl_server_credentials([(leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes())])
    p2 = secure.add_secure_port("127.0.0.1:0", creds)
    plain.start()
    secure.start()
    yield p1, p2
    plain.stop(0)
    secure.stop(0)


@pytest.fixture(scope="module")
def router(ca: trustme.CA, upstreams: tuple[int, int], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[RouterProc, int, int, Path]]:
    tmp = tmp_path_factory.mktemp("grpc")
    leaf = ca.issue_cert("grpc.example.com")
    (tmp / "site.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    plain, secure = upstreams
    routes = (f'route add echo /test.Echo grpc://127.0.0.1:{plain} opts "proto=grpc"\n'
              f'route add echos grpcs.example.com/test.Echo grpcs://127.0.0.1:{secure} opts "grpcservername=echo.internal"\n')
    tport, gport = free_port(), free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", routes, env={"ROUTER_LISTENER": "own",
                   "SSL_CERT_FILE": str(write_ca(ca, tmp))})  # the router trusts the test CA for grpcs upstreams
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};cs=c,127.0.0.1:{gport};proto=grpc",
                "-proxy.cs", f"cs=c;type=file;cert={tmp / 'site.pem'}"]
    with r:
        yield r, tport, gport, tmp


def write_ca(ca: trustme.CA, tmp: Path) -> Path:
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return tmp / "ca.pem"


def tls_channel(ca: trustme.CA, port: int, authority: str = "grpc.example.com") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
        ("grpc.ssl_target_name_override", "grpc.example.com"), ("grpc.default_authority", authority)])


@pytest.mark.parametrize("kind", ["tls", "h2c"])
def test_all_four_shapes(router, ca: trustme.CA, kind: str) -> None:  # type: ignore[no-untyped-def]
    _, tport, gport, _ = router
    ch = tls_channel(ca, tport) if kind == "tls" else grpc.insecure_channel(f"127.0.0.1:{gport}")
    with ch:
        resp, call = ch.unary_unary("/test.Echo/Unary").with_call(b"hi", metadata=(("x-client", "c1"),), timeout=10)
        assert resp == b"echo:hi"
        assert ("x-trailer", "t-c1") in call.trailing_metadata()  # trailers passed through
        assert list(ch.unary_stream("/test.Echo/ServerStream")(b"n", timeout=10)) == [b"n0", b"n1", b"n2", b"n3", b"n4"]
        assert ch.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
        assert list(ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=10)) == [b"X", b"Y"]


def test_status_and_deadline(router, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    _, tport, _, _ = router
    with tls_channel(ca, tport) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Fail")(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "no such thing"
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Slow")(b"", timeout=0.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpcs_upstream_with_grpcservername(router, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    _, tport, _, _ = router
    with tls_channel(ca, tport, authority="grpcs.example.com") as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"over tls", timeout=10) == b"echo:over tls"


@pytest.mark.parametrize("kind", ["tls", "h2c"])
def test_more_than_a_window_of_answers_on_one_connection(router, ca: trustme.CA, kind: str) -> None:  # type: ignore[no-untyped-def]
    """Every answer's bytes are credited back to the upstream connection's window, also those of calls
    that ended before their data was read: 200 answers of 1 KiB (three times the 64 KiB default window)
    all arrive, none hangs until its deadline."""
    _, tport, gport, _ = router
    ch = tls_channel(ca, tport) if kind == "tls" else grpc.insecure_channel(f"127.0.0.1:{gport}")
    body = b"w" * 1024
    with ch:
        call = ch.unary_unary("/test.Echo/Unary")
        for i in range(200):
            assert call(body + str(i).encode(), timeout=10) == b"echo:" + body + str(i).encode()


def test_many_concurrent_calls_on_one_connection(router, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    _, tport, _, _ = router
    with tls_channel(ca, tport) as ch:
        call = ch.unary_unary("/test.Echo/Unary")
        results: list[bytes] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            r = call(str(i).encode(), timeout=20)
            with lock:
                results.append(r)

        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(200)))
        assert sorted(results) == sorted(b"echo:%d" % i for i in range(200))


def test_grpc_metrics(router, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
    r, tport, _, _ = router
    with tls_channel(ca, tport) as ch:
        ch.unary_unary("/test.Echo/Unary")(b"m", timeout=10)
    text = httpx.get(r.ui + "/metrics").text
    assert 'consul_router_grpc_status_total{code="0"}' in text and "consul_router_grpc_requests_total" in text


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_fabios_grpc_metrics_and_calls_without_a_route(router) -> None:  # type: ignore[no-untyped-def]
    r, _, gport, _ = router
    before = httpx.get(r.ui + "/metrics").text
    with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:  # a new connection on the proto=grpc listener
        assert ch.unary_unary("/test.Echo/Unary")(b"m", timeout=10) == b"echo:m"
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/nothing.Here/Call")(b"", timeout=10)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "no route found")  # fabio's answer
    after = httpx.get(r.ui + "/metrics").text
    for name, grew in (("consul_router_grpc_connections_total", 1), ("consul_router_grpc_noroute_total", 1),
                       ("consul_router_grpc_request_duration_seconds_count", 1)):
        assert _sample(after, name) - _sample(before, name) == grew, name
    # the call landed in the histogram's buckets (how long it took is bench/'s business, not this test's)
    inf = {"le": "+Inf"}
    assert _sample(after, "consul_router_grpc_request_duration_seconds_bucket", **inf) - _sample(
        before, "consul_router_grpc_request_duration_seconds_bucket", **inf) == 1
    # fabio's target timer: the call counts on its route like an HTTP request
    route = {"service": "echo", "route": "/test.Echo"}
    assert _sample(after, "consul_router_requests_total", **route) - _sample(before, "consul_router_requests_total",
                                                                             **route) == 1


def test_an_instance_going_away_lets_its_calls_in_flight_finish(ca: trustme.CA) -> None:
    """grpcio's graceful stop sends GOAWAY and finishes the calls it has: those calls succeed through the
    router too (only new calls need another connection), as they would when made to the instance directly."""
    inst, r, gport = instance_and_router(_handlers(), "/test.Echo")
    with r, grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"warm", timeout=10) == b"echo:warm"  # the upstream connection is up
        slow = ch.unary_unary("/test.Echo/Slow").future(b"x", timeout=20)
        time.sleep(1)  # the call is at the instance, in its 3 s sleep
        stopped = inst.stop(grace=10)  # GOAWAY now; the call in flight goes on
        assert slow.result(timeout=20) == b"late"
        stopped.wait(10)
