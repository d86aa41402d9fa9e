"""The proxy over real sockets: strip/prepend, errors, streaming, retries. Static routes, no Consul."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.backends import Backend, module_backend
from tests.router_proc import RouterProc, free_port

backend = module_backend("b1")


@pytest.fixture(scope="module")
def router(backend: Backend) -> Iterator[RouterProc]:
    dead = free_port()  # nothing listens there: connection refused
    routes = "\n".join([
        f"route add svc /plain http://127.0.0.1:{backend.port}/",
        f'route add svc /api http://127.0.0.1:{backend.port}/ opts "strip=/api"',
        f'route add svc /v2 http://127.0.0.1:{backend.port}/ opts "prepend=/internal"',
        f"route add svc /flaky http://127.0.0.1:{dead}/",
        f"route add svc /flaky http://127.0.0.1:{backend.port}/",
        f"route add svc /dead http://127.0.0.1:{dead}/",
        f'route add svc /timeout http://127.0.0.1:{backend.port}/ opts "timeout=300ms"',
        f'route add svc /go http://127.0.0.1:{backend.port}/ opts "redirect=301"',
        'route add svc /moved https://new.example.com$path opts "redirect=302"',
    ])
    with RouterProc.static(routes, "-proxy.strategy", "rr") as r:
        yield r


def last_path(b: Backend) -> str:
    return b.requests[-1].path


def test_plain_path_and_query_forwarded(router: RouterProc, backend: Backend) -> None:
    r = httpx.get(router.url + "/plain/x%20y?a=1&b=%2F")
    assert r.status_code == 200 and r.text == "b1\n"
    assert last_path(backend) == "/plain/x%20y?a=1&b=%2F"


def test_strip_and_prepend(router: RouterProc, backend: Backend) -> None:
    assert httpx.get(router.url + "/api/users?id=1").status_code == 200
    assert last_path(backend) == "/users?id=1"
    assert backend.requests[-1].headers["x-forwarded-prefix"] == "/api"
    assert httpx.get(router.url + "/api").status_code == 200
    assert last_path(backend) == "/"
    assert httpx.get(router.url + "/v2/items").status_code == 200
    assert last_path(backend) == "/internal/v2/items"


def raw_get(router: RouterProc, target: str) -> int:
    """GET with the request target sent byte for byte (httpx would normalise dot segments)."""
    with socket.create_connection(("127.0.0.1", router.proxy_port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(("target", "upstream"), [
    ("/api/a%25b", "/a%25b"),                  # strip=/api: %25 stays %25 (not a bare "%")
    ("/api/a%2Fb", "/a%2Fb"),                  # %2F stays %2F (not "/")
    ("/api/x%20y/%7e?q=%2F&r=%25", "/x%20y/%7e?q=%2F&r=%25"),
    ("/%61pi/a%2Fb", "/a%2Fb"),                # the stripped prefix itself sent encoded
    ("/api", "/"),
    ("/v2/a%2Fb%25", "/internal/v2/a%2Fb%25"),  # prepend=/internal
    ("/x/../api/a%2Fb", "/a%2Fb"),             # normalised, then stripped, encoding kept
    ("/plain/a%2Fb%25c", "/plain/a%2Fb%25c"),  # no strip/prepend: the raw target as it came
])
def test_upstream_keeps_the_client_encoding(router: RouterProc, backend: Backend, target: str,
                                            upstream: str) -> None:
    assert raw_get(router, target) == 200
    assert last_path(backend) == upstream  # the backend's raw request target


def test_dot_segments_are_routed_after_normalisation(router: RouterProc, backend: Backend) -> None:
    r = httpx.get(router.url + "/nothing/../plain/a")
    assert r.status_code == 200
    assert last_path(backend) == "/plain/a"
    assert httpx.get(router.url + "/plain/../secret").status_code == 404


def test_no_route_is_404(router: RouterProc) -> None:
    assert httpx.get(router.url + "/unknown").status_code == 404


def test_refused_instance_is_retried_on_another(router: RouterProc) -> None:
    statuses = [httpx.get(router.url + "/flaky").status_code for _ in range(6)]
    assert statuses == [200] * 6


def test_unreachable_upstream_is_502(router: RouterProc) -> None:
    r = httpx.get(router.url + "/dead")
    assert r.status_code == 502 and "unreachable" in r.text


def test_slow_upstream_is_504(router: RouterProc) -> None:
    r = httpx.get(router.url + "/timeout/slow?s=2", timeout=10)
    assert r.status_code == 504


def test_redirects(router: RouterProc) -> None:
    r = httpx.get(router.url + "/moved/a?q=1")
    assert r.status_code == 302 and r.headers["location"] == "https://new.example.com/moved/a?q=1"


def test_request_body_streams_up_chunked_and_sized(router: RouterProc) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    r = httpx.post(router.url + "/plain/echo", content=data)
    assert r.status_code == 200 and r.content == data

    def gen() -> Iterator[bytes]:
        for i in range(10):
            yield f"part{i};".encode()

    r = httpx.post(router.url + "/plain/echo", content=gen())
    assert r.text == "".join(f"part{i};" for i in range(10))


def test_response_chunks_arrive_as_sent(router: RouterProc) -> None:
    """Each chunk reaches the client when the upstream sends it, not when the response ends."""
    arrivals = []
    t0 = time.monotonic()
    with httpx.stream("GET", router.url + "/plain/stream?n=4&gap=0.3") as r:
        for chunk in r.iter_raw():
            if chunk:
                arrivals.append((time.monotonic() - t0, chunk))
    assert b"".join(c for _, c in arrivals) == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    assert len(arrivals) >= 3  # not buffered into one piece
    assert arrivals[0][0] < arrivals[-1][0] - 0.5


def test_head_and_http10(router: RouterProc) -> None:
    r = httpx.head(router.url + "/plain")
    assert r.status_code == 200 and r.content == b""
    with socket.create_connection(("127.0.0.1", router.proxy_port), timeout=5) as s:
        s.sendall(b"GET /plain HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
    assert data.endswith(b"b1\n")


def test_not_ready_is_503() -> None:
    # registry.timeout=0: the proxy port opens before the first table (tests/test_startup_gate.py has the rule)
    with RouterProc("-registry.consul.addr", f"127.0.0.1:{free_port()}", "-registry.timeout", "0",
                    wait_ready=False) as r:
        assert httpx.get(r.url + "/anything").status_code == 503
        assert httpx.get(r.ui + "/health").status_code == 503
        assert r.proc is not None and r.proc.poll() is None
