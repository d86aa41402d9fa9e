"""The PROXY protocol header (router/listen/proxyproto.py): v1 and v2, incremental, and hostile input.

Real headers are built here byte by byte from HAProxy's specification; the hostile rows are what a
client (or a broken balancer) can send: garbage, truncation at every byte, over-long lines, bad
addresses and ports, unknown versions, families and commands.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.listen import proxyproto
from router.listen.proxyproto import NOT_PROXY, ProxyHeader, ProxyHeaderError, parse, v1_header

SIG = proxyproto.V2_SIGNATURE


def v2(cmd: int = 1, fam: int = 0x11, body: bytes | None = None, ver: int = 2) -> bytes:
    if body is None:
        body = socket.inet_aton("10.1.2.3") + socket.inet_aton("10.9.9.9") + struct.pack("!HH", 4321, 443)
    return SIG + bytes([(ver << 4) | cmd, fam]) + struct.pack("!H", len(body)) + body


V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1") + socket.inet_pton(socket.AF_INET6, "2001:db8::2") \
    + struct.pack("!HH", 5555, 80)


@pytest.mark.parametrize(("data", "expected"), [
    (b"PROXY TCP4 192.168.0.1 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n",
     ProxyHeader(1, ("192.168.0.1", 56324), ("10.0.0.1", 443), 43)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 65535), 44)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None, 15)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest", ProxyHeader(1, None, None, 35)),  # the spec: rest ignored
    (v2() + b"\x16\x03\x01", ProxyHeader(2, ("10.1.2.3", 4321), ("10.9.9.9", 443), 28)),
    (v2(fam=0x21, body=V6), ProxyHeader(2, ("2001:db8::1", 5555), ("2001:db8::2", 80), 52)),
    (v2(cmd=0, body=b""), ProxyHeader(2, None, None, 16)),  # LOCAL: a health check from the balancer
    (v2(fam=0x11, body=v2()[16:] + b"\x04\x00\x02ab"), ProxyHeader(2, ("10.1.2.3", 4321), ("10.9.9.9", 443), 33)),  # a TLV
    (v2(fam=0x00, body=b""), ProxyHeader(2, None, None, 16)),  # UNSPEC
    (b"GET / HTTP/1.1\r\n", NOT_PROXY),
    (b"\x16\x03\x01\x02\x00", NOT_PROXY),  # a TLS ClientHello
    (b"PROXZ", NOT_PROXY),
    (b"\r\n\r\n\x00\r\nQUIX", NOT_PROXY),
])
def test_headers(data: bytes, expected: object) -> None:
    assert parse(data) == expected


@pytest.mark.parametrize("whole", [b"PROXY TCP4 192.168.0.1 10.0.0.1 56324 443\r\n", v2(), v2(fam=0x21, body=V6)])
def test_every_truncation_asks_for_more(whole: bytes) -> None:
    for n in range(1, len(whole)):
        assert parse(whole[:n]) is None, n
    assert isinstance(parse(whole), ProxyHeader)


@pytest.mark.parametrize(("data", "message"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CRLF"),  # a bare LF
    (b"PROXY " + b"A" * 120, "without CRLF within 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected PROXY TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected PROXY TCP4|TCP6"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "expected PROXY TCP4|TCP6"),  # two spaces
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "is not a TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "is not a TCP6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n", "bad port"),
    (b"PROXY TCP4 \xff\xfe 5.6.7.8 1 2\r\n", "bad address"),
    (v2(ver=1), "version 1, expected 2"),
    (v2(cmd=2), "unknown command 2"),
    (v2(fam=0x41), "unknown address family 4"),
    (v2(fam=0x12), "transport 2 is not a stream"),
    (v2(fam=0x11, body=b"\x00" * 8), "IPv4 addresses need 12 bytes"),
    (v2(fam=0x21, body=b"\x00" * 20), "IPv6 addresses need 36 bytes"),
    (SIG + b"\x21\x11" + struct.pack("!H", 60000), "at most 4096"),
])
def test_hostile_headers_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        parse(data)


@given(st.binary(max_size=200))
def test_any_bytes_give_an_answer_never_a_crash(data: bytes) -> None:
    for prefix in (b"", b"PROXY ", SIG):
        try:
            got = parse(prefix + data)
        except ProxyHeaderError:
            continue
        assert got is None or got == NOT_PROXY or (isinstance(got, ProxyHeader) and 0 < got.length <= len(prefix + data))


@pytest.mark.parametrize(("client", "server", "line"), [
    (("192.168.0.1", 56324), ("10.0.0.1", 3306), b"PROXY TCP4 192.168.0.1 10.0.0.1 56324 3306\r\n"),
    (("2001:db8::1", 1), ("2001:db8::2", 2), b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
    (("::ffff:10.0.0.9", 5), ("10.0.0.1", 6), b"PROXY TCP4 10.0.0.9 10.0.0.1 5 6\r\n"),
    (("10.0.0.9", 5), ("::ffff:10.0.0.1", 6), b"PROXY TCP4 10.0.0.9 10.0.0.1 5 6\r\n"),
    (("10.0.0.9", 5), ("2001:db8::2", 6), b"PROXY TCP6 ::ffff:10.0.0.9 2001:db8::2 5 6\r\n"),
])
def test_v1_header_written_upstream(client: tuple, server: tuple, line: bytes) -> None:
    assert v1_header(client, server) == line
    assert parse(line) is not None  # what we write, we (and every PROXY reader) can read
