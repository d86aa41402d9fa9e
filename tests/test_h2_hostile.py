"""HTTP/2 hostile input against the real router's TLS listener (router/listen/h2proto.py): rapid reset,
SETTINGS and PING floods, a header list over the limit, malformed frames, more streams than allowed. Each
must end (or refuse) only the offending connection, bounded, while other clients keep being served.

The attacking client is python-hyper's h2 in client mode, with frames written raw where h2 itself would
refuse to send them.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trustme

from tests.backends import Backend
from tests.router_proc import RouterProc, free_port


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def router(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProc, int, Path]]:
    tmp = tmp_path_factory.mktemp("h2")
    leaf = ca.issue_cert("h2.example.com")
    (tmp / "site.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    b = Backend("b1").start()
    tport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add svc / http://127.0.0.1:{b.port}/", env={"ROUTER_LISTENER": "own"})
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};cs=c", "-proxy.cs",
                f"cs=c;type=file;cert={tmp / 'site.pem'}", "-proxy.maxheaderbytes", "16384"]
    with r:
        yield r, tport, tmp
    b.stop()


def connect(port: int, ca_file: Path) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="h2.example.com")
    assert s.selected_alpn_protocol() == "h2"
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def read_until_closed(s: ssl.SSLSocket, c: h2.connection.H2Connection, limit: float = 10) -> list:
    """Every event until the router closes the connection (or `limit` seconds pass)."""
    events: list = []
    deadline = time.monotonic() + limit
    s.settimeout(1)
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            break
        if not data:
            break
        try:
            events += c.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        out = c.data_to_send()
        if out:
            try:
                s.sendall(out)
            except (ConnectionError, ssl.SSLError):
                break
    return events


def raw_goaway(s: ssl.SSLSocket, limit: float = 10) -> int | None:
    """The error code of the GOAWAY frame among the raw frames the router sends until it closes (frames
    parsed by hand: after our own invalid frame, h2's client state machine refuses to read on)."""
    raw = b""
    s.settimeout(limit)
    try:
        while data := s.recv(65536):
            raw += data
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    pos = 0
    while pos + 9 <= len(raw):
        length, kind = int.from_bytes(raw[pos:pos + 3], "big"), raw[pos + 3]
        if kind == 0x7 and pos + 9 + 8 <= len(raw):
            return int.from_bytes(raw[pos + 13:pos + 17], "big")
        pos += 9 + length
    return None


def req(sid: int, path: str = "/", extra: list | None = None) -> list:
    return [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"h2.example.com"),
            (b":path", path.encode()), *(extra or [])]


def goaway(events: list) -> h2.events.ConnectionTerminated | None:
    return next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)


def still_serves(port: int, ca_file: Path) -> bool:
    out = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(ca_file), "--resolve",
                          f"h2.example.com:{port}:127.0.0.1", f"https://h2.example.com:{port}/ok"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() == "b1"


def test_rapid_reset_ends_the_connection(router) -> None:  # type: ignore[no-untyped-def]
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    for i in range(400):  # CVE-2023-44487: open a stream, cancel it at once, again and again
        sid = 1 + 2 * i
        c.send_headers(sid, req(sid), end_stream=True)
        c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    s.sendall(c.data_to_send())
    ev = goaway(read_until_closed(s, c))
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert still_serves(port, tmp / "ca.pem")


@pytest.mark.parametrize("frame", ["settings", "ping"])
def test_control_frame_floods_end_the_connection(router, frame: str) -> None:  # type: ignore[no-untyped-def]
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    for i in range(1000):
        if frame == "settings":
            c.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i % 2})
        else:
            c.ping(i.to_bytes(8, "big"))
    try:
        s.sendall(c.data_to_send())
    except (ConnectionError, ssl.SSLError):
        pass  # closed while we were still flooding: what we want
    ev = goaway(read_until_closed(s, c))
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert still_serves(port, tmp / "ca.pem")


def test_a_header_list_over_the_limit_ends_the_connection(router) -> None:  # type: ignore[no-untyped-def]
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    read_until_closed(s, c, limit=0.5)  # the router's SETTINGS (max header list 16 KiB) arrive
    big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(40)]  # 40 KB of headers
    c.send_headers(1, req(1, extra=big), end_stream=True)
    s.sendall(c.data_to_send())
    events = read_until_closed(s, c)
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
    ev = goaway(events)
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert still_serves(port, tmp / "ca.pem")


def test_malformed_frames_end_the_connection(router) -> None:  # type: ignore[no-untyped-def]
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    # a DATA frame on stream 0 (connection-level): a PROTOCOL_ERROR by RFC 9113 6.1
    s.sendall(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd")
    assert raw_goaway(s) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    s2, _ = connect(port, tmp / "ca.pem")
    s2.sendall(b"\x00\x00\x08\xfa\x00\x00\x00\x00\x01" + b"\xff" * 8 + b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\xff")
    assert raw_goaway(s2) is not None  # an unknown frame (ignored, as the RFC says), then HEADERS that do not decode
    assert still_serves(port, tmp / "ca.pem")


def test_streams_beyond_the_limit_end_the_connection(router) -> None:  # type: ignore[no-untyped-def]
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    read_until_closed(s, c, limit=0.5)
    assert c.remote_settings.max_concurrent_streams == 100  # what the router advertised
    # open 101 streams whose bodies never end (h2's own client would refuse to send the 101st)
    c.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = [1000]
    for i in range(101):
        sid = 1 + 2 * i
        c.send_headers(sid, [(b":method", b"POST"), *req(sid)[1:]], end_stream=False)
    s.sendall(c.data_to_send())
    ev = goaway(read_until_closed(s, c, limit=5))
    # RFC 9113 5.1.2 allows a stream or a connection error; h2 ends the connection, naming the last stream
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR and ev.last_stream_id == 199
    assert still_serves(port, tmp / "ca.pem")


def test_goaway_with_answers_in_flight_is_not_a_proxy_failure(router) -> None:  # type: ignore[no-untyped-def]
    """A client that sends GOAWAY while its requests are still being answered (h2load does at the end of
    -D) ends those streams quietly: no "proxy failed", no 500 attempted on the closed connection, no
    task left with an exception; the listener keeps serving."""
    r, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    for i in range(5):
        sid = 1 + 2 * i
        c.send_headers(sid, req(sid, "/slow?s=0.5"), end_stream=True)
    c.close_connection()
    s.sendall(c.data_to_send())
    read_until_closed(s, c, limit=3)  # the router closes its side (TLS close_notify) at once
    time.sleep(1.5)  # but the TCP connection stays open while the answers arrive from the backend
    s.close()
    assert still_serves(port, tmp / "ca.pem")
    log = r.output()
    assert "the proxy failed" not in log and "Task exception was never retrieved" not in log, log[-2000:]
