"""The hot-path upstream client (router/proxy/upstream.py) against real servers.

Raw asyncio servers let a test shape the bytes exactly (close-delimited bodies, 1xx, a pooled
connection the server dropped); tests/backends.py's aiohttp Backend covers ordinary traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from router.proxy.headers import ForwardingHeaders
from router.proxy.upstream import Upstream
from router.proxy.upstream_conn import MAX_HEAD, READ_AHEAD, READ_MAX
from router.proxy.upstream_errors import ConnectFailed, UpstreamError, UpstreamTimeout
from tests.backends import Backend
from tests.router_proc import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture(scope="module")
def backend() -> Backend:
    b = Backend("b1").start()
    yield b
    b.stop()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


class RawServer:
    """asyncio server; counts connections and hands each to `handler(reader, writer, n)`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> RawServer:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(r, w, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def fetch(up: Upstream, url: str, method: str = "GET", body=None, **kw) -> tuple[int, bytes, dict]:  # type: ignore[no-untyped-def]
    resp = await up.request(method, url, [("host", "test")], body, **kw)
    data = b"".join([c async for c in resp.content.iter_any()])
    resp.release()
    return resp.status, data, {n.lower(): v for n, v in resp.raw_headers}


def test_get_and_keepalive_reuse(backend: Backend) -> None:
    async def main() -> None:
        up = Upstream()
        url = f"http://127.0.0.1:{backend.port}/x?q=1"
        for _ in range(3):
            status, body, headers = await fetch(up, url)
            assert (status, body, headers[b"x-backend"]) == (200, b"b1\n", b"b1")
        idle = up._idle[("http", "127.0.0.1", backend.port, True)]
        assert len(idle) == 1 and idle[0].uses == 3  # one connection served all three
        await up.close()

    asyncio.run(main())
    assert backend.requests[-1].path == "/x?q=1"


def test_chunked_response(backend: Backend) -> None:
    async def main() -> None:
        up = Upstream()
        status, body, headers = await fetch(up, f"http://127.0.0.1:{backend.port}/stream?n=4&gap=0.01")
        assert status == 200 and headers.get(b"transfer-encoding") == b"chunked"
        assert body == b"".join(f"chunk {i}\n".encode() for i in range(4))
        await up.close()

    asyncio.run(main())


def test_close_delimited_response_and_connection_close() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await w.drain()

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            for _ in range(2):
                assert (await fetch(up, srv.url + "/"))[:2] == (200, b"until the end")
            assert srv.connections == 2  # Connection: close is honoured: never reused
            await up.close()

    asyncio.run(main())


def test_head_204_and_304_have_no_body_and_keep_the_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_head(r)
            if head.startswith(b"HEAD"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"/204" in head:
                w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif b"/304" in head:
                w.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            status, body, headers = await fetch(up, srv.url + "/", method="HEAD")
            assert (status, body, headers[b"content-length"]) == (200, b"", b"1000")
            assert (await fetch(up, srv.url + "/204"))[:2] == (204, b"")
            assert (await fetch(up, srv.url + "/304"))[:2] == (304, b"")
            assert (await fetch(up, srv.url + "/"))[:2] == (200, b"ok")
            assert srv.connections == 1
            await up.close()

    asyncio.run(main())


def test_interim_100_continue_is_skipped() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-A: 1\r\n\r\ndone")
        await w.drain()
        await r.read()

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            status, body, headers = await fetch(up, srv.url + "/")
            assert (status, body, list(headers)) == (201, b"done", [b"content-length", b"x-a"])
            await up.close()

    asyncio.run(main())


def _dropping_server(heads: list[bytes] | None = None) -> Handler:
    """Answers the first request on a connection, then drops the connection on the second one.

    Every request head that arrives is appended to `heads` (when given), answered or not.
    """

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        head = await read_head(r)
        if heads is not None:
            heads.append(head)
        if b"content-length" in head.lower() or b"chunked" in head.lower():
            await r.read(1)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nconn %d" % (len(b"conn %d" % n), n))
        await w.drain()
        second = await read_head(r)  # the second request arrives: close without a word
        if heads is not None:
            heads.append(second)

    return handler


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    async def main() -> None:
        async with RawServer(_dropping_server()) as srv:
            up = Upstream()
            assert await fetch(up, srv.url + "/") == (200, b"conn 1", {b"content-length": b"6"})
            assert (await fetch(up, srv.url + "/"))[:2] == (200, b"conn 2")
            assert srv.connections == 2
            await up.close()

    asyncio.run(main())


def test_stale_connection_does_not_resend_a_bodiless_post() -> None:
    """No body does not make a request safe to repeat: the POST head was written, the server may have
    acted on it, so it is not sent again (UpstreamError: 502 from the proxy, as Go's net/http does)."""

    async def main() -> None:
        heads: list[bytes] = []
        async with RawServer(_dropping_server(heads)) as srv:
            up = Upstream()
            assert (await fetch(up, srv.url + "/first"))[:2] == (200, b"conn 1")
            with pytest.raises(UpstreamError, match="reused upstream connection"):
                await fetch(up, srv.url + "/order", method="POST")
            await asyncio.sleep(0.05)  # a resend, had there been one, would be on a new connection by now
            assert srv.connections == 1
            assert [h.split(b" ", 2)[:2] for h in heads] == [[b"GET", b"/first"], [b"POST", b"/order"]]
            # the pool holds nothing broken: the next request dials afresh and is answered
            assert (await fetch(up, srv.url + "/"))[:2] == (200, b"conn 2")
            await up.close()

    asyncio.run(main())


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_stale_connection_resends_idempotent_methods_without_a_streamed_body(method: str) -> None:
    async def main() -> None:
        heads: list[bytes] = []
        async with RawServer(_dropping_server(heads)) as srv:
            up = Upstream()
            await fetch(up, srv.url + "/")
            body = b"v" if method == "PUT" else None
            status, data, _ = await fetch(up, srv.url + "/again", method=method, body=body)
            assert status == 200 and data == (b"" if method == "HEAD" else b"conn 2")
            assert srv.connections == 2
            assert [h.split(b" ", 1)[0] for h in heads] == [b"GET", method.encode(), method.encode()]
            await up.close()

    asyncio.run(main())


def test_stale_connection_with_a_streamed_body_is_not_replayed() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 10

    async def main() -> None:
        async with RawServer(_dropping_server()) as srv:
            up = Upstream()
            await fetch(up, srv.url + "/")
            with pytest.raises(UpstreamError):
                await fetch(up, srv.url + "/", method="POST", body=body())
            assert srv.connections == 1  # not sent again: the body iterator is already consumed
            await up.close()

    asyncio.run(main())


def test_large_streamed_upload_and_download(backend: Backend) -> None:
    size = 24 << 20
    block = bytes(range(256)) * 256  # 64 KiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    async def main() -> None:
        up = Upstream()
        url = f"http://127.0.0.1:{backend.port}/echo"
        status, data, _ = await fetch(up, url, method="POST", body=body())  # no length: chunked
        assert status == 200 and len(data) == size
        assert hashlib.sha256(data).digest() == hashlib.sha256(block * (size // len(block))).digest()
        hdrs = [("host", "t"), ("content-length", str(size))]
        resp = await up.request("PUT", url, hdrs, body())  # with a length: sent as is
        n = 0
        async for chunk in resp.content.iter_any():
            n += len(chunk)
        resp.release()
        assert (resp.status, n) == (200, size)
        await up.close()

    asyncio.run(main())
    assert backend.requests[-2].headers.get("transfer-encoding") == "chunked"
    assert backend.requests[-1].headers.get("content-length") == str(size)


def test_slow_consumer_pauses_the_upstream_socket() -> None:
    total = 64 << 20

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * (1 << 20)
        for _ in range(total >> 20):
            w.write(block)
            await w.drain()

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            resp = await up.request("GET", srv.url + "/", [], None)
            for _ in range(100):  # let the server push as much as it can while nobody reads
                await asyncio.sleep(0.01)
            assert resp._conn.paused_reading
            # nobody asked for the body: one read plus one read-ahead at most, not the whole 64 MiB
            assert 0 < resp._buffered <= READ_MAX + READ_AHEAD
            got = 0
            async for chunk in resp.content.iter_any():
                got += len(chunk)
            resp.release()
            assert got == total
            await up.close()

    asyncio.run(main())


def test_connect_failed_and_header_timeout(backend: Backend) -> None:
    async def main() -> None:
        up = Upstream(dial_timeout=2)
        with pytest.raises(ConnectFailed):
            await up.request("GET", f"http://127.0.0.1:{free_port()}/", [], None)
        with pytest.raises(UpstreamTimeout):
            await up.request("GET", f"http://127.0.0.1:{backend.port}/slow?s=1", [], None, header_timeout=0.2)
        assert not up._idle.get(("http", "127.0.0.1", backend.port, True))  # a timed-out connection is dropped
        await up.close()

    asyncio.run(main())


def test_idle_connections_expire(backend: Backend) -> None:
    async def main() -> None:
        up = Upstream(idle_timeout=0.1)
        await fetch(up, f"http://127.0.0.1:{backend.port}/")
        key = ("http", "127.0.0.1", backend.port, True)
        conn = up._idle[key][0]
        for _ in range(100):
            if key not in up._idle:
                break
            await asyncio.sleep(0.05)
        assert key not in up._idle and conn.transport is not None and conn.transport.is_closing()
        await up.close()

    asyncio.run(main())


def test_https_upstream_with_and_without_verification(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_head(r)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            w.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        up = Upstream()
        with pytest.raises(ConnectFailed):  # self-signed: refused when verifying
            await up.request("GET", url, [], None)
        for _ in range(2):  # tlsskipverify
            assert (await fetch(up, url, verify_tls=False))[:2] == (200, b"secret")
        assert len(up._idle[("https", "127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")), False)]) == 1
        await up.close()
        server.close()

    asyncio.run(main())


def test_body_arriving_after_the_head_then_reuse() -> None:
    """A Content-Length body that comes in later packets bypasses the parser; the next response still parses."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        for i in range(3):
            await read_head(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            await w.drain()
            await asyncio.sleep(0.02)
            w.write(b"cdef")
            await w.drain()
            await asyncio.sleep(0.02)
            w.write(b"gh%d\n" % i)
            await w.drain()

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            for i in range(3):
                assert (await fetch(up, srv.url + "/"))[:2] == (200, b"abcdefgh%d\n" % i)
            assert srv.connections == 1
            await up.close()

    asyncio.run(main())


def test_bytes_after_a_whole_answer_end_the_connection() -> None:
    """A small answer that arrived whole does not pause the socket (no pause and resume per request): bytes
    that follow it before the next request are the upstream out of step, so that connection is never reused
    and the next request gets a fresh one with its own answer, not the stray bytes."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")  # nobody asked for this
        await w.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            resp = await up.request("GET", srv.url + "/", [("host", "test")], None)
            assert resp.whole() == b"one"
            await asyncio.sleep(0.2)  # the stray answer arrives while the response is still held
            assert resp.raw_headers == [(b"Content-Length", b"3")]  # not parsed into the held response
            resp.release()
            assert (await fetch(up, srv.url + "/"))[:2] == (200, b"one")  # a fresh connection: not "stray"
            assert srv.connections == 2
            await up.close()

    asyncio.run(main())


def test_forward_headers_follow_the_proxy_rule() -> None:
    """Response.forward (made while the head is parsed) is ForwardingHeaders.response_headers' result: lower-case
    names, hop-by-hop headers dropped; None (the proxy then applies the rule itself) when Connection names
    other headers."""
    heads = [
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
        b"Connection: keep-alive\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nUpgrade: h2c\r\n"
        b"Trailer: X-T\r\nProxy-Authenticate: Basic\r\nX-a: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\nX-Keep: 1\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nX-Only: 1\r\nConnection: Keep-Alive\r\n\r\n",
    ]

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_head(r)
        w.write(heads[n - 1])
        await w.drain()
        await asyncio.sleep(0.3)

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            got = []
            for _ in heads:
                up._idle.clear()  # a fresh connection (and head) each time
                resp = await up.request("GET", srv.url + "/", [("host", "test")], None)
                got.append((resp.forward, ForwardingHeaders.response_headers(resp.raw_headers)))
                resp.close()
            await up.close()
        for forward, rule in got[:2] + got[3:]:
            assert forward == rule
        assert got[0][0] == [(b"server", b"nginx"), (b"content-type", b"text/plain"), (b"content-length", b"2")]
        assert got[1][0] == [(b"x-a", b"1"), (b"x-a", b"2")]
        assert got[2][0] is None and got[2][1] == [(b"content-length", b"2"), (b"x-keep", b"1")]
        assert got[3][0] == [(b"x-only", b"1")]

    asyncio.run(main())


def test_endless_response_head_is_an_error_not_memory() -> None:
    """An upstream that keeps sending header lines (broken or hostile) must not make the router buffer them
    until memory runs out: past MAX_HEAD bytes the response is a 502-class error and the connection closes."""
    sent = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
        while sent < 64 * MAX_HEAD:  # never ends the head; stops only when the router hangs up
            w.write(line * 64)
            sent += len(line) * 64
            await w.drain()
        await asyncio.sleep(30)

    async def main() -> None:
        async with RawServer(handler) as srv:
            up = Upstream()
            with pytest.raises(UpstreamError, match="head"):
                await asyncio.wait_for(up.request("GET", srv.url + "/", [], None), 20)
            assert sent < 32 * MAX_HEAD  # it hung up near the limit (plus what socket buffers hold)
            await up.close()

    asyncio.run(main())


def test_idle_connections_per_host_are_capped_by_proxy_maxconn(backend: Backend) -> None:
    """proxy.maxconn is Go's MaxIdleConnsPerHost: of three connections that finish together, the pool keeps
    that many idle ones and closes the rest; 0 means Go's default of 2."""
    from router.config.settings import load
    from router.run.assemble import build_proxy
    from router.table.state import RouterState

    def pool(maxconn: str) -> Upstream:
        cfg = load(["-registry.backend", "static", "-proxy.maxconn", maxconn])
        return build_proxy(cfg, RouterState()).upstream

    async def main() -> None:
        up = pool("1")
        url = f"http://127.0.0.1:{backend.port}/slow?s=0.2"  # in flight together, so three connections
        await asyncio.gather(*(fetch(up, url) for _ in range(3)))
        key = ("http", "127.0.0.1", backend.port, True)
        assert len(up._idle[key]) == 1
        await up.close()
        assert pool("0").max_idle == 2 and pool("10000").max_idle == 10000

    asyncio.run(main())
