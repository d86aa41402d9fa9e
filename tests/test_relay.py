"""An upstream answer relayed to an HTTP/1.1 client from the upstream connection's read callbacks
(router/proxy/upstream_response.py `Response.relay`) arrives whole and in order: for a client that keeps up,
and for one that stalls now and then, whose stalls pause the upstream socket, shrink the next read and
reuse read buffers the client's transport let go of (router/proxy/upstream_conn.py `_spare`). The body is
random bytes and checked by digest, so a lost, repeated, reordered or overwritten piece fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httptools
import pytest

from tests.router_proc import RouterProc, free_port, wait_port

BODY = os.urandom(3 << 20)  # more than the 64 KiB send buffer and the socket buffers between
DIGEST = hashlib.sha256(BODY).hexdigest()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """/r/sized: BODY with a Content-Length, in 96 KiB writes; /r/chunked: BODY in chunks of 1 byte to 200 KiB."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/chunked" in head.split(b"\r\n", 1)[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                i, n = 0, 1
                while i < len(BODY):
                    piece = BODY[i:i + n]
                    writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    await writer.drain()
                    i, n = i + len(piece), n * 7 % 200_003 + 1
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY))
                for i in range(0, len(BODY), 96 * 1024):
                    writer.write(BODY[i:i + 96 * 1024])
                    await writer.drain()
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _tls_context(tmp: Path) -> ssl.SSLContext | None:
    """A self-signed server context for the TLS origin (the route says tlsskipverify); None without openssl."""
    if shutil.which("openssl") is None:
        return None
    cert, key = tmp / "c.pem", tmp / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@pytest.fixture(scope="module")
def router() -> Iterator[RouterProc]:
    """The router with /r to the plain origin and, when openssl is there, /t to the same origin over TLS
    (asyncio's TLS layer then calls the upstream connection's read callbacks)."""
    port, tls_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="relay-"))
    tls = _tls_context(tmp)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        servers = [loop.run_until_complete(asyncio.start_server(_serve, "127.0.0.1", port))]
        if tls is not None:
            servers.append(loop.run_until_complete(asyncio.start_server(_serve, "127.0.0.1", tls_port, ssl=tls)))
        ready.set()
        loop.run_forever()
        for server in servers:
            server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    wait_port(port)
    routes = f"route add svc /r http://127.0.0.1:{port}/"
    if tls is not None:
        routes += f'\nroute add tls /t https://127.0.0.1:{tls_port}/ opts "tlsskipverify=true"'
    try:
        with RouterProc.static(routes) as r:
            r.tls = tls is not None  # type: ignore[attr-defined]
            yield r
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        shutil.rmtree(tmp, ignore_errors=True)


class _Answer:
    """httptools callbacks: the status and the decoded body's digest."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.digest.update(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done = True


def fetch(router: RouterProc, path: str, stalls: int) -> _Answer:
    """GET `path` on a socket with a small receive buffer (so the router caps its send buffer: its writes
    to us are refused whenever we stop); `stalls` times, stop reading for 60 ms."""
    answer = _Answer()
    parser = httptools.HttpResponseParser(answer)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window under 16 KiB: a 64 KiB send buffer (slowread.py)
        s.settimeout(10)
        s.connect(("127.0.0.1", router.proxy_port))
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
        every = len(BODY) // (stalls + 1) if stalls else 0
        next_stall = every
        while not answer.done:
            data = s.recv(32 * 1024)
            assert data, f"closed after {answer.size} body bytes"
            parser.feed_data(data)
            if every and answer.size >= next_stall:
                next_stall += every
                time.sleep(0.06)
    assert parser.get_status_code() == 200
    return answer


@pytest.mark.parametrize("path", ["/r/sized", "/r/chunked"])
@pytest.mark.parametrize("stalls", [0, 8])
def test_relayed_body_arrives_whole(router: RouterProc, path: str, stalls: int) -> None:
    answer = fetch(router, path, stalls)
    assert answer.size == len(BODY)
    assert answer.digest.hexdigest() == DIGEST


@pytest.mark.parametrize("path", ["/t/sized", "/t/chunked"])
def test_relayed_body_from_a_tls_upstream_arrives_whole(router: RouterProc, path: str) -> None:
    if not router.tls:  # type: ignore[attr-defined]
        pytest.skip("openssl CLI not installed")
    answer = fetch(router, path, 4)
    assert (answer.size, answer.digest.hexdigest()) == (len(BODY), DIGEST)


def test_two_answers_on_one_connection_in_turn(router: RouterProc) -> None:
    """The read buffer kept for reuse goes with its response: the next answer on the pooled upstream
    connection is its own bytes."""
    for _ in range(2):
        for path in ("/r/sized",):
            answer = fetch(router, path, 2)
            assert (answer.size, answer.digest.hexdigest()) == (len(BODY), DIGEST)
