"""An HTTP/2 stream the client resets, or a connection it closes, ends the upstream exchanges it had
open (router/listen/h2proto.py): the router stops waiting on the HTTP/1.1 instance and closes that
upstream connection (it has half an answer on it, never reusable) instead of reading an answer nobody
wants, while the other streams of the connection go on.

The instance is a raw socket server that answers `/hold` never and `/part` with half its body, then
only waits to see its connection closed, so nothing but the client's leaving can end those exchanges.
Client: python-hyper's h2 over the real router's TLS listener. Assertions are events seen at the
instance, hang guards generous.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trustme

from tests.raw_upstream import RawUpstream
from tests.router_proc import RouterProc, free_port
from tests.test_h2_hostile import connect

GUARD = 20.0


class Instance(RawUpstream):
    """A keep-alive HTTP/1.1 server on raw sockets, one thread per connection. `/ok` is answered;
    `/hold?id=X` and `/part?id=X` mark X seen, then wait for the connection to close (X closed)."""

    def __init__(self) -> None:
        self.seen: dict[str, threading.Event] = {}
        self.closed: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        super().__init__()

    def events(self, name: str) -> tuple[threading.Event, threading.Event]:
        with self.lock:
            return (self.seen.setdefault(name, threading.Event()), self.closed.setdefault(name, threading.Event()))

    def _serve(self, c: socket.socket, n: int) -> None:
        buf = b""
        with c:
            while True:
                got = self.read_head(c, buf)
                if got is None:
                    return
                head, buf = got
                path = head.split(b" ", 2)[1].decode()
                if path.startswith("/ok"):
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    continue
                seen, closed = self.events(path.partition("id=")[2])
                if path.startswith("/part"):
                    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
                seen.set()
                c.settimeout(GUARD * 3)
                try:
                    while c.recv(65536):
                        pass
                except OSError:
                    pass
                closed.set()
                return


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, int, Path, RouterProc]]:
    ca = trustme.CA()
    tmp = tmp_path_factory.mktemp("h2cancel")
    leaf = ca.issue_cert("h2.example.com")
    (tmp / "site.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    inst = Instance()
    tport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add svc / http://127.0.0.1:{inst.port}/", env={"ROUTER_LISTENER": "own"})
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};cs=c", "-proxy.cs",
                f"cs=c;type=file;cert={tmp / 'site.pem'}"]
    with r:
        yield inst, tport, tmp / "ca.pem", r
    inst.sock.close()


def get(c: h2.connection.H2Connection, sid: int, path: str) -> None:
    c.send_headers(sid, [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"https"),
                         (b":authority", b"h2.example.com")], end_stream=True)


def answers(s: ssl.SSLSocket, c: h2.connection.H2Connection, want: set[int]) -> dict[int, bytes]:
    """Read until the streams in `want` have ended; -> their bodies."""
    got: dict[int, bytes] = {}
    ended: set[int] = set()
    s.settimeout(GUARD)
    while not want <= ended:
        data = s.recv(65536)
        assert data, "the router closed the connection"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                got[ev.stream_id] = got.get(ev.stream_id, b"") + ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
        s.sendall(c.data_to_send())
    return got


def test_a_reset_stream_ends_its_upstream_exchange_only(setup) -> None:  # type: ignore[no-untyped-def]
    inst, port, ca, _ = setup
    s, c = connect(port, ca)
    names = {1: "reset-hold", 3: "reset-part", 5: "kept-part"}
    for sid, name in names.items():
        get(c, sid, f"/{name.split('-')[1]}?id={name}")
    s.sendall(c.data_to_send())
    for name in names.values():
        assert inst.events(name)[0].wait(GUARD), f"{name} never reached the instance"
    for sid in (1, 3):  # one waiting for its head, one mid-body
        c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    s.sendall(c.data_to_send())
    for sid in (1, 3):
        assert inst.events(names[sid])[1].wait(GUARD), f"{names[sid]}'s upstream connection was never closed"
    # the connection and its other stream go on: a new request is answered, the kept one still open
    get(c, 7, "/ok")
    s.sendall(c.data_to_send())
    assert answers(s, c, {7})[7] == b"ok"
    assert not inst.events("kept-part")[1].is_set()
    s.close()
    assert inst.events("kept-part")[1].wait(GUARD)  # and its client's leaving ends it too


def test_a_closed_connection_ends_all_its_upstream_exchanges(setup) -> None:  # type: ignore[no-untyped-def]
    inst, port, ca, r = setup
    before = gone_count(r)
    s, c = connect(port, ca)
    names = {1: "gone-hold-1", 3: "gone-part-3", 5: "gone-hold-5", 7: "gone-part-7"}
    for sid, name in names.items():
        get(c, sid, f"/{name.split('-')[1]}?id={name}")
    s.sendall(c.data_to_send())
    for name in names.values():
        assert inst.events(name)[0].wait(GUARD), f"{name} never reached the instance"
    s.close()  # TCP closes with four streams open
    for name in names.values():
        assert inst.events(name)[1].wait(GUARD), f"{name}'s upstream connection was never closed"
    # each counted on its route as a client that left (499, as on HTTP/1.1), none lost from the counters
    deadline = time.monotonic() + GUARD
    while gone_count(r) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone_count(r) == before + 4


def gone_count(r: RouterProc) -> float:
    """Answers counted as 4xx on the route (here only the 499s of clients that left)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(httpx.get(r.ui + "/metrics").text)
               for s in fam.samples if s.name == "consul_router_responses_total" and s.labels.get("code") == "4xx")
