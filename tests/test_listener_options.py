"""fabio's listener option `it=` (client idle keep-alive timeout) on proxy.addr: parsed, validated, applied."""

from __future__ import annotations

import socket
import time

import pytest

from router.config.addrs import client_idle_timeout
from router.config.settings import ConfigError, load
from tests.router_proc import RouterProc


@pytest.mark.parametrize(("addr", "seconds"), [
    (":9999", 75.0),  # ours when unset (fabio: never); see client_idle_timeout
    (":9999;it=30s", 30.0),
    ("127.0.0.1:9999;proto=http;it=1m30s;rt=5s", 90.0),
    (":9999;it=0", 86400.0),  # fabio: 0 = no idle timeout
])
def test_it_option_is_parsed(addr: str, seconds: float) -> None:
    assert client_idle_timeout(addr) == seconds


def test_bad_it_option_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.addr.*it="):
        load(["-proxy.addr", ":9999;it=soon"], env={})


def test_idle_client_connection_is_closed_after_it() -> None:
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "")
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port};it=1s"]  # a later flag wins
    with r:
        idle = socket.create_connection(("127.0.0.1", r.proxy_port), timeout=10)
        idle.sendall(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 404")
        t0 = time.monotonic()
        while idle.recv(65536):  # wait for the router to close the idle keep-alive connection
            pass
        waited = time.monotonic() - t0
        idle.close()
    assert 0.5 < waited < 30, waited  # closed by it=1s, not kept for the default 75 s
