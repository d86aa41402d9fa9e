"""TCP listeners in the real router process (`python -m router`): proto=tcp beside the HTTP listener,
a router with TCP listeners only, and tcp-dynamic opening a listener for a route's port as the table
gains it (and closing it when the route goes).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.consul_helpers import wait_until
from tests.router_proc import RouterProc, free_port


class Echo(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.shutdown()
    e.server_close()


def roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_tcp_listener_beside_the_http_one(echo: Echo) -> None:
    tport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add db :{tport} tcp://127.0.0.1:{echo.port}")
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};proto=tcp"]
    with r:
        assert roundtrip(tport, b"x" * 100_000) == b"x" * 100_000
        assert httpx.get(r.url + "/nothing").status_code == 404  # HTTP still served on its own listener
        assert "TCP proxy listening on 127.0.0.1:%d" % tport in r.output()
        listeners = httpx.get(r.ui + "/api/status").json()["listeners"]
        assert [(x["addr"], x["proto"]) for x in listeners] == [(f"127.0.0.1:{r.proxy_port}", "http"),
                                                                (f"127.0.0.1:{tport}", "tcp")]
        def closed_metrics() -> str | None:  # the counters as soon as the connection is closed on both sides
            text = httpx.get(r.ui + "/metrics").text
            return text if "consul_router_tcp_open 0.0" in text else None

        metrics = wait_until(closed_metrics)
        labels = f'route=":{tport}",service="db",target="tcp://127.0.0.1:{echo.port}"'
        assert f"consul_router_route_tx_bytes_total{{{labels}}} 100000.0" in metrics  # fabio's route.tx
        assert f"consul_router_route_rx_bytes_total{{{labels}}} 100000.0" in metrics
        assert 'consul_router_tcp_connections_total{kind="tcp"} 1.0' in metrics


def test_a_router_with_tcp_listeners_only(echo: Echo) -> None:
    tport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add db :{tport} tcp://127.0.0.1:{echo.port}")
    r.flags += ["-proxy.addr", f"127.0.0.1:{tport};proto=tcp"]
    with r:
        assert roundtrip(tport) == b"ping"
        with pytest.raises(OSError):  # no HTTP listener was opened on the default port the test reserved
            socket.create_connection(("127.0.0.1", r.proxy_port), timeout=2).close()


def test_tcp_dynamic_follows_the_table(echo: Echo, tmp_path: Path) -> None:
    dport = free_port()
    routes = tmp_path / "routes.txt"
    routes.write_text(f"route add db :{dport} tcp://127.0.0.1:{echo.port}\n")
    r = RouterProc("-registry.backend", "file", "-registry.file.path", str(routes))
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:0;proto=tcp-dynamic;refresh=100ms"]
    with r:
        assert wait_until(lambda: roundtrip(dport) == b"ping", timeout=10)
        routes.write_text("")  # the route goes: its listener closes
        time.sleep(0.1)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", dport), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        assert wait_until(refused, timeout=10)


def test_a_tls_tcp_listener_whose_certificate_cannot_be_read_stops_startup(tmp_path: Path) -> None:
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "")
    tport = free_port()
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};proto=tcp;cs=x", "-proxy.cs",
                f"cs=x;type=file;cert={tmp_path}/missing.pem"]
    with pytest.raises(RuntimeError) as e:
        r.start()
    assert "router exited with 2" in str(e.value)
    assert f"config error: proxy.addr: listener 127.0.0.1:{tport};proto=tcp;cs=x: cert source x: cannot read " \
           f"{tmp_path}/missing.pem" in str(e.value)
