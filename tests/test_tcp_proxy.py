"""TCP listeners (router/listen/tcp.py, accept.py, splice.py) in-process, against real sockets: proto=tcp
routes by port, tcp+sni by the ClientHello's server name (the TLS stream untouched), allow/deny on the
client address, byte counters, the PROXY protocol on the listener and the route option writing v1.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import struct

import pytest
import trustme

from router.listen.accept import Acceptor
from router.listen.tcp import TCPCounters, TCPProxy
from router.run.edge import bind
from router.table.builder import TableBuilder
from router.table.routecmd import parse


def table(text: str):  # type: ignore[no-untyped-def]
    cmds, errs = parse(text)
    assert not errs
    t, errs = TableBuilder().update(manual=cmds)
    assert not errs
    return t


class Upstream:
    """A TCP server that records what each connection sent first and echoes (or answers TLS)."""

    def __init__(self, tls: ssl.SSLContext | None = None, greet: bytes = b"") -> None:
        self.tls = tls
        self.greet = greet
        self.first: list[bytes] = []
        self.conns = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        try:
            if self.greet:
                writer.write(self.greet)
            data = await reader.read(65536)
            self.first.append(data)
            while data:
                writer.write(data)
                await writer.drain()
                data = await reader.read(65536)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()


async def listen(kind: str, routes_for, *, proxy_timeout: float = 0.0, counters: TCPCounters | None = None,  # type: ignore[no-untyped-def]
                 tls: ssl.SSLContext | None = None) -> tuple[Acceptor, int, TCPProxy]:
    sock = bind("127.0.0.1", 0)
    sock.listen()  # bind() only binds: whoever serves it listens (Edge._accept)
    port = sock.getsockname()[1]
    t = table(routes_for(port))
    proxy = TCPProxy(kind, lambda: t, counters=counters, dial_timeout=5.0, tls=tls)
    acc = Acceptor(sock, proxy, proxy_timeout=proxy_timeout)
    asyncio.get_running_loop().create_task(acc.serve())
    return acc, port, proxy


async def exchange(port: int, payload: bytes, *, prefix: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(prefix + payload)
    await writer.drain()
    got = b""
    try:
        while len(got) < len(payload) or not got.endswith(payload[-16:]):
            chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return got


async def closed_without_data(port: int, prefix: bytes = b"", wait: float = 5.0) -> bool:
    """Whether the router closed the connection (after `prefix`) without sending anything. Still open after
    `wait` seconds (a hang guard, not a measure) is False: the router never closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if prefix:
        writer.write(prefix)
    try:
        data = await asyncio.wait_for(reader.read(100), wait)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()
    return data == b""


def test_proto_tcp_routes_by_the_listener_port_and_counts_bytes() -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        counters = TCPCounters()
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port}\n", counters=counters)
        blob = os.urandom(3 << 20)  # 3 MiB each way, intact
        got = await exchange(port, blob)
        acc.close()
        up.close()
        key = next(iter(counters.rx))
        return hashlib.sha256(got).digest() == hashlib.sha256(blob).digest(), counters.rx[key], counters.tx[key], \
            counters.conn, key

    same, rx, tx, conns, key = asyncio.run(main())
    assert same
    assert rx == tx == 3 << 20  # rx: from the upstream, tx: to it (fabio's route.rx/route.tx)
    assert conns == {"tcp": 1}
    assert key[0] == "db" and key[1].startswith(":") and key[2].startswith("tcp://127.0.0.1:")


def test_no_route_closes_the_connection_and_is_counted() -> None:
    async def main() -> tuple:
        counters = TCPCounters()
        acc, port, _ = await listen("tcp", lambda p: "route add db :1 tcp://127.0.0.1:9\n", counters=counters)
        closed = await closed_without_data(port, b"hello")
        acc.close()
        return closed, counters.noroute

    assert asyncio.run(main()) == (True, {"tcp": 1})


@pytest.mark.parametrize(("opts", "allowed"), [
    ('opts "deny=ip:127.0.0.0/8"', False),
    ('opts "allow=ip:10.0.0.0/8"', False),
    ('opts "allow=ip:127.0.0.1"', True),
    ('opts "deny=ip:10.0.0.0/8,ip:::1"', True),
])
def test_allow_and_deny_on_the_client_address(opts: str, allowed: bool) -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        counters = TCPCounters()
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port} {opts}\n",
                                    counters=counters)
        got = await exchange(port, b"ping")
        acc.close()
        up.close()
        return got, up.conns, counters.denied

    got, conns, denied = asyncio.run(main())
    if allowed:
        assert (got, conns, denied) == (b"ping", 1, {})
    else:  # refused before any upstream connection
        assert (got, conns, denied) == (b"", 0, {"tcp": 1})


def test_route_pxyproto_writes_a_v1_header_upstream() -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        acc, port, _ = await listen("tcp", lambda p: f'route add db :{p} tcp://127.0.0.1:{up_port} opts "pxyproto=true"\n')
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        cport = writer.get_extra_info("sockname")[1]
        writer.write(b"hello")
        expected = f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {port}\r\nhello".encode()
        echoed = await asyncio.wait_for(reader.readexactly(len(expected)), 5)
        writer.close()
        acc.close()
        up.close()
        return echoed, cport, port

    echoed, cport, port = asyncio.run(main())
    assert echoed == f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {port}\r\nhello".encode()


def v2_header(src: str, sport: int) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("10.0.0.1") + struct.pack("!HH", sport, 3306)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize("header", [b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 3306\r\n", v2_header("203.0.113.7", 40000)])
def test_listener_pxyproto_takes_the_client_address_from_the_header(header: bytes) -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        routes = lambda p: f'route add db :{p} tcp://127.0.0.1:{up_port} opts "allow=ip:203.0.113.7 pxyproto=true"\n'  # noqa: E731
        acc, port, _ = await listen("tcp", routes, proxy_timeout=0.25)
        got = await exchange(port, b"data after the header", prefix=header)
        refused = await closed_without_data(port, b"no header at all")  # 127.0.0.1 is not allowed
        acc.close()
        up.close()
        return got, up.first, refused

    got, first, refused = asyncio.run(main())
    assert refused  # without a header the socket's 127.0.0.1 is the client, which allow= does not name
    # the header was consumed exactly; the upstream hears the client the balancer named
    assert got.endswith(b"data after the header")
    assert first[0].startswith(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 ")
    assert got.startswith(first[0]) and got == first[0] + b"data after the header"


@pytest.mark.parametrize(("prefix", "delay"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 0.0),  # bare LF
    (b"PROXY GARBAGE\r\n", 0.0),
    (b"PROXY TCP4 1.2.3.4", 0.0),  # truncated, then nothing: bounded by pxytimeout
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", 0.0),  # v2 claiming 64 KiB of addresses
    (b"PROXY " + b"9" * 200, 0.0),
])
def test_hostile_proxy_headers_close_the_connection(prefix: bytes, delay: float) -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port}\n", proxy_timeout=0.25)
        closed = await closed_without_data(port, prefix)  # the client never closes: the router must
        acc.close()
        up.close()
        return closed, up.conns, acc.refused

    closed, conns, refused = asyncio.run(main())
    assert (closed, conns, refused) == (True, 0, 1)  # closed by the router (pxytimeout 250ms), not the client


def test_a_slow_proxy_header_is_cut_at_pxytimeout() -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port}\n", proxy_timeout=0.25)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = False
        for ch in b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n":  # one byte every 50 ms: 1.6 s in all
            try:
                writer.write(bytes([ch]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            await asyncio.sleep(0.05)
        if not closed:
            closed = await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        acc.close()
        up.close()
        return closed, up.conns

    assert asyncio.run(main()) == (True, 0)


def test_a_silent_client_is_served_directly_after_pxytimeout() -> None:
    # server-speaks-first protocols (MySQL, SMTP): no header, no bytes; fabio serves them as direct connections
    async def main() -> bytes:
        up = Upstream(greet=b"220 ready\r\n")
        up_port = await up.start()
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port}\n", proxy_timeout=0.25)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        acc.close()
        up.close()
        return greeting

    assert asyncio.run(main()) == b"220 ready\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tcp_sni_splices_the_untouched_tls_stream(ca: trustme.CA) -> None:
    async def main() -> tuple:
        ctx_a = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("db.example.com").configure_cert(ctx_a)
        ctx_b = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("mq.example.com").configure_cert(ctx_b)
        a, b = Upstream(tls=ctx_a), Upstream(tls=ctx_b)
        pa, pb = await a.start(), await b.start()
        counters = TCPCounters()
        acc, port, _ = await listen("tcp+sni", lambda p: f"route add db db.example.com/ tcp://127.0.0.1:{pa}\n"
                                                         f"route add mq mq.example.com tcp://127.0.0.1:{pb}\n",
                                    counters=counters)
        client = ssl.create_default_context()
        ca.configure_trust(client)  # verified end to end: the upstream's own certificate reaches the client
        out = []
        for name in ("db.example.com", "MQ.example.com"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=name)
            writer.write(b"over tls")
            out.append(await asyncio.wait_for(reader.readexactly(8), 5))
            writer.close()
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="other.example.com")
        refused = await closed_without_data(port, b"GET / HTTP/1.1\r\nHost: db.example.com\r\n\r\n")  # not TLS
        acc.close()
        a.close()
        b.close()
        return out, counters.noroute, counters.connfail, refused

    out, noroute, connfail, refused = asyncio.run(main())
    assert out == [b"over tls", b"over tls"]
    assert noroute == {"tcp_sni": 1} and connfail == {"tcp_sni": 1} and refused


def test_openssl_s_client_through_tcp_sni(ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> str:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("db.example.com").configure_cert(ctx)
        up = Upstream(tls=ctx)
        up_port = await up.start()
        acc, port, _ = await listen("tcp+sni", lambda p: f"route add db db.example.com/ tcp://127.0.0.1:{up_port}\n")
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        p = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "db.example.com",
            "-verify_hostname", "db.example.com", "-CAfile", str(tmp_path / "ca.pem"), "-quiet",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        p.stdin.write(b"ping over s_client\n")  # -quiet keeps s_client open at EOF: read the echo, then stop it
        try:
            out = await asyncio.wait_for(p.stdout.readline(), 20)
        finally:
            p.terminate()
            err = await p.stderr.read()
            await p.wait()
        acc.close()
        up.close()
        return out.decode() + "|" + err.decode()

    text = asyncio.run(main())
    assert text.startswith("ping over s_client\n"), text
    assert "verify error" not in text, text


def test_proto_tcp_with_a_cert_source_terminates_tls(ca: trustme.CA) -> None:
    from router.cert.pairs import Pair
    from router.cert.tlsctx import SNIContext, TLSSettings

    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        leaf = ca.issue_cert("tcp.example.com")
        sni = SNIContext(TLSSettings(alpn=()), strict=False)
        sni.replace([Pair("x.pem", leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())])
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port}\n", tls=sni.context)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="tcp.example.com")
        writer.write(b"secret")
        echoed = await asyncio.wait_for(reader.readexactly(6), 5)
        writer.close()
        acc.close()
        up.close()
        return echoed, up.first

    assert asyncio.run(main()) == (b"secret", [b"secret"])  # plain bytes upstream


def test_half_close_is_passed_on() -> None:
    # the client sends its request and shuts down its writing half; the upstream still answers it
    async def main() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()  # until the FIN the proxy passed on
            writer.write(b"got " + data)
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        up_port = srv.sockets[0].getsockname()[1]
        acc, port, _ = await listen("tcp", lambda p: f"route add db :{p} tcp://127.0.0.1:{up_port}\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"question")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        acc.close()
        srv.close()
        return answer

    assert asyncio.run(main()) == b"got question"


def test_rt_closes_a_connection_whose_client_stays_silent() -> None:
    async def main() -> tuple:
        up = Upstream()
        up_port = await up.start()
        sock = bind("127.0.0.1", 0)
        sock.listen()
        port = sock.getsockname()[1]
        t = table(f"route add db :{port} tcp://127.0.0.1:{up_port}\n")
        acc = Acceptor(sock, TCPProxy("tcp", lambda: t, read_timeout=0.3))
        asyncio.get_running_loop().create_task(acc.serve())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
        for _ in range(4):  # busy for longer than rt: each read resets it
            await asyncio.sleep(0.15)
            writer.write(b"b")
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"b"
        gone = await asyncio.wait_for(reader.read(1), 5)  # then silent: closed by rt (5 s is only a hang guard)
        writer.close()
        acc.close()
        up.close()
        return gone

    assert asyncio.run(main()) == b""  # the router closed the idle connection; the client never did


def test_wt_closes_a_connection_whose_client_does_not_read() -> None:
    async def main() -> tuple:
        up = Upstream(greet=b"z" * (64 << 20))  # far more than the kernel's socket buffers hold
        up_port = await up.start()
        sock = bind("127.0.0.1", 0)
        sock.listen()
        port = sock.getsockname()[1]
        t = table(f"route add db :{port} tcp://127.0.0.1:{up_port}\n")
        counters = TCPCounters()
        acc = Acceptor(sock, TCPProxy("tcp", lambda: t, write_timeout=0.3, counters=counters))
        asyncio.get_running_loop().create_task(acc.serve())
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.2)
        t0 = loop.time()
        while counters.open or loop.time() - t0 < 0.1:  # the router closes its side once writes stall for wt
            await asyncio.sleep(0.05)
            if loop.time() - t0 > 10:
                break
        took = loop.time() - t0
        c.close()
        acc.close()
        up.close()
        return took, counters.open

    took, still_open = asyncio.run(main())
    assert still_open == 0, took  # closed by wt= (the 10 s loop is only a hang guard)
