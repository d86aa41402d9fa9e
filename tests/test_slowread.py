"""router/listen/slowread.py: a peer that advertises a tiny TCP window gets a capped kernel send buffer,
every other peer keeps the kernel's autotuning. Real loopback sockets; the receive buffer a client sets
before connecting is the window it advertises (slowhttptest -X does the same)."""

from __future__ import annotations

import socket
import struct
import sys

import pytest

from router.listen.slowread import CAPPED_SNDBUF, SMALL_WINDOW, cap_if_slow, peer_window

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's layout is Linux's")


@pytest.mark.parametrize(("info", "window"), [
    (b"", None),  # not TCP_INFO at all
    (bytes(104), None),  # a kernel too old to report tcpi_snd_wnd
    (bytes(228) + struct.pack("=I", 1152), 1152),
    (bytes(228) + struct.pack("=I", 65536) + bytes(24), 65536),  # newer kernels append fields
])
def test_peer_window(info: bytes, window: int | None) -> None:
    assert peer_window(info) == window


def _accepted(rcvbuf: int | None) -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    client = socket.socket()
    if rcvbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(srv.getsockname())
    conn, _ = srv.accept()
    return srv, client, conn


@pytest.mark.parametrize(("rcvbuf", "capped"), [(1024, True), (4096, True), (None, False), (256 * 1024, False)])
def test_only_a_tiny_window_caps_the_send_buffer(rcvbuf: int | None, capped: bool) -> None:
    srv, client, conn = _accepted(rcvbuf)
    try:
        before = conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        window = peer_window(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256))
        if window is None:
            pytest.skip("this kernel does not report tcpi_snd_wnd")
        assert (window < SMALL_WINDOW) is capped
        assert cap_if_slow(conn) is capped
        after = conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if capped:  # Linux doubles the value for its bookkeeping
            assert after == 2 * CAPPED_SNDBUF and after < before
        else:
            assert after == before
    finally:
        for s in (conn, client, srv):
            s.close()


def test_not_a_tcp_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert cap_if_slow(a) is False
    assert cap_if_slow(None) is False
