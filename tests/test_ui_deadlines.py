"""fabio's `rt=`/`wt=` on `ui.addr` (router/listen/ui_deadlines.py): the admin UI drops a connection whose
request does not arrive within rt, or whose answer is not written within wt, and nothing else.

The real router for the read deadline (a client that stops inside its request head, beside keep-alive
clients that must keep working); uvicorn's protocol with an app that never answers for the write one.
`pxyproto=true` on ui.addr (router/listen/ui_proxyproto.py): the real router with a Consul agent, whose UI
write guard shows which client address a request was given."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import uvicorn
from uvicorn.server import ServerState

from router.listen.ui_deadlines import DeadlineProtocol, with_deadlines
from tests.router_proc import RouterProc

RT = 0.4


def _read_all(sock: socket.socket, until: float) -> bytes:
    """What the server sends until it closes (b"" read or a reset), or until `until` (monotonic)."""
    out = b""
    while time.monotonic() < until:
        sock.settimeout(max(until - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return out + b"<reset>"
        if not chunk:
            return out + b"<closed>"
        out += chunk
    return out


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    buf = b""
    while b"OK\n" not in buf:
        sock.settimeout(10)
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    return buf


def test_ui_read_deadline_drops_an_unfinished_request_and_spares_idle_keep_alive() -> None:
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "")
    r.flags += ["-ui.addr", f"127.0.0.1:{r.ui_port};rt={int(RT * 1000)}ms;it=30s"]
    with r:
        assert not [line for line in r.output().splitlines() if "rt=" in line and "ignored" in line]
        slow = socket.create_connection(("127.0.0.1", r.ui_port))
        keep = socket.create_connection(("127.0.0.1", r.ui_port))
        try:
            assert b" 200 " in _get(keep)
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
            got = _read_all(slow, time.monotonic() + 15)
            assert got.endswith((b"<closed>", b"<reset>")), got  # dropped, not left waiting
            assert b"200" not in got
            # the keep-alive connection waited longer than rt between its requests: that is it=, not rt
            assert b" 200 " in _get(keep)
        finally:
            slow.close()
            keep.close()
        # a silent connection is dropped too (its first request must start within rt)
        silent = socket.create_connection(("127.0.0.1", r.ui_port))
        try:
            assert _read_all(silent, time.monotonic() + 15).endswith((b"<closed>", b"<reset>"))
        finally:
            silent.close()


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.written = b""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 9998)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(cls: type[DeadlineProtocol], app: object) -> tuple[DeadlineProtocol, _Transport]:
    config = uvicorn.Config(app, http=cls, lifespan="off", log_level="warning")  # type: ignore[arg-type]
    config.load()
    proto = cls(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    proto.connection_made(transport)
    return proto, transport


def test_ui_write_deadline_drops_an_answer_not_written_in_time() -> None:
    async def run() -> tuple[bool, bool, bytes]:
        hang = asyncio.Event()

        async def app(scope: dict, receive: object, send) -> None:  # type: ignore[no-untyped-def]
            if scope["type"] != "http":
                return
            if scope["path"] == "/slow":
                await hang.wait()  # never answers
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        cls = with_deadlines(0.0, 0.2)
        assert cls is not None
        fast, fast_t = _protocol(cls, app)
        fast.data_received(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        slow, slow_t = _protocol(cls, app)
        slow.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.6)
        hang.set()
        await asyncio.sleep(0)
        return slow_t.aborted, fast_t.aborted, fast_t.written

    slow_aborted, fast_aborted, fast_written = asyncio.run(run())
    assert slow_aborted  # past wt with no answer: dropped
    assert not fast_aborted and fast_written.endswith(b"ok")  # answered in time: its deadline was cleared


def test_no_deadlines_keep_uvicorns_own_protocol() -> None:
    assert with_deadlines(0.0, 0.0) is None
    cls = with_deadlines(1.5, 0.0)
    assert cls is not None and issubclass(cls, DeadlineProtocol)
    assert (cls.read_timeout, cls.write_timeout) == (1.5, 0.0)


def _save(port: int, proxy_header: bytes) -> bytes:
    """A UI write (PUT /api/manual) on a new connection, after `proxy_header`; the answer's status line."""
    body = b'{"value": "route del x\\n", "version": "0"}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(proxy_header + b"PUT /api/manual HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        got = _read_all(s, time.monotonic() + 15)
    return got.split(b"\r\n", 1)[0] + b" " + got.rsplit(b"\r\n\r\n", 1)[-1]


def test_ui_behind_a_proxy_protocol_balancer_sees_the_headers_client(consul_agent) -> None:  # type: ignore[no-untyped-def]
    # a real Consul: the write guard judges the client before the override is saved there
    r = RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath",
                   f"/ui-pxyproto-{time.monotonic_ns()}/config")
    r.flags += ["-ui.addr", f"127.0.0.1:{r.ui_port};pxyproto=true;pxytimeout=2s"]
    with r:
        # the header names a remote client: the UI's write guard refuses it, as it would that host itself
        remote = _save(r.ui_port, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 %d\r\n" % r.ui_port)
        assert remote.startswith(b"HTTP/1.1 403") and b"other hosts than loopback" in remote, remote
        # the same write from loopback, with a v1 header or none at all (served directly, as fabio's listener)
        first = _save(r.ui_port, b"PROXY TCP4 127.0.0.1 127.0.0.1 40001 %d\r\n" % r.ui_port)
        assert first.startswith(b"HTTP/1.1 200"), first  # saved
        again = _save(r.ui_port, b"")  # version 0 again: past the guard, Consul's compare-and-set refuses it
        assert again.startswith(b"HTTP/1.1 409"), again
        # a header that starts and is garbage: the connection is closed, nothing is served
        with socket.create_connection(("127.0.0.1", r.ui_port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 not-an-address\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            bad = _read_all(s, time.monotonic() + 15)
        assert bad.endswith((b"<closed>", b"<reset>")) and b"200" not in bad, bad
        assert httpx.get(f"{r.ui}/health", timeout=5).status_code == 200  # the readiness path still works
