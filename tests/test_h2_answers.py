"""HTTP/2 answers through the real router's TLS listener (router/listen/h2proto.py on libnghttp2): bodies
larger than the client's windows, answers streamed in pieces (the data provider deferred and resumed),
HEAD and 204 answers without a body, and padded request bodies (padding is flow-controlled too: credit
never given back for it would starve the connection). Clients: curl and python-hyper's h2.
"""

from __future__ import annotations

import hashlib
import subprocess
import time

import h2.events

from tests.test_h2_hostile import ca, connect, req, router  # noqa: F401  (module fixtures shared)


def curl(port: int, tmp, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(["curl", "-sS", "--http2", "--cacert", str(tmp / "ca.pem"), "--resolve",
                           f"h2.example.com:{port}:127.0.0.1", *args], capture_output=True, timeout=60)


def test_a_body_larger_than_the_windows_arrives_whole(router) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, port, tmp = router
    n = 3_000_000  # ~46 stream windows of 64 KiB: every one must be refilled by the client's WINDOW_UPDATEs
    out = curl(port, tmp, "-o", "-", f"https://h2.example.com:{port}/big?n={n}")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == n and out.stdout == b"x" * n
    # and a slow reader (curl's rate limit keeps the windows shut most of the time) gets it all too
    out = curl(port, tmp, "--limit-rate", "2M", "-o", "-", f"https://h2.example.com:{port}/big?n=1000000")
    assert out.returncode == 0 and hashlib.sha256(out.stdout).digest() == hashlib.sha256(b"x" * 1_000_000).digest()


def test_a_streamed_answer_arrives_piece_by_piece(router) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    c.send_headers(1, req(1, "/stream?n=4&gap=0.2"), end_stream=True)
    s.sendall(c.data_to_send())
    pieces: list[tuple[float, bytes]] = []
    ended = False
    s.settimeout(10)
    while not ended:
        data = s.recv(65536)
        assert data, "the router closed the connection"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                pieces.append((time.monotonic(), ev.data))
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
        s.sendall(c.data_to_send())
    assert b"".join(p for _, p in pieces) == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    assert len([p for _, p in pieces if p]) >= 3  # sent as they came, not gathered until the end
    s.close()


def test_head_and_204_answers_have_no_body(router) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, port, tmp = router
    out = curl(port, tmp, "-I", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
               f"https://h2.example.com:{port}/big?n=5000")
    assert out.returncode == 0 and out.stdout == b"200 0", (out.stdout, out.stderr)
    out = curl(port, tmp, "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
               f"https://h2.example.com:{port}/status?code=204")
    assert out.returncode == 0 and out.stdout == b"204 0", (out.stdout, out.stderr)


def test_padded_request_bodies_do_not_starve_the_connection(router) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, port, tmp = router
    s, c = connect(port, tmp / "ca.pem")
    s.settimeout(10)
    got: dict[int, bytes] = {1: b"", 3: b"", 5: b""}
    ended: set[int] = set()

    def read() -> None:
        data = s.recv(65536)
        assert data, "the router closed the connection"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                got[ev.stream_id] += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
        s.sendall(c.data_to_send())

    body = b"".join(b"%03d" % i for i in range(400))
    for sid in (1, 3, 5):  # three bodies whose padding alone (3 x 88 KB) is more than the connection's window
        c.send_headers(sid, [(b":method", b"POST"), *req(sid, "/echo")[1:]])
        for i in range(400):
            while c.local_flow_control_window(sid) < 300:  # the router's WINDOW_UPDATEs must come
                read()
            c.send_data(sid, body[3 * i:3 * i + 3], pad_length=220)
            s.sendall(c.data_to_send())
        c.end_stream(sid)
        s.sendall(c.data_to_send())
    while ended != {1, 3, 5}:
        read()
    assert got == {1: body, 3: body, 5: body}
    s.close()
