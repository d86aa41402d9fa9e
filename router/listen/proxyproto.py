"""The PROXY protocol (HAProxy's spec, v1 text and v2 binary): read a header, write a v1 header.

A load balancer in front of a `pxyproto=true` listener sends one header before the client's first
byte, naming the client's real address. The parser is pure and incremental: it is fed the bytes read so
far and says "not a PROXY header", "need more bytes", or gives the header and how many bytes it took.

fabio's listener (armon/go-proxyproto) is lenient, and so are we: a connection whose first bytes are not
a PROXY signature, or that sends nothing within `pxytimeout` (a server-speaks-first protocol), is served
as a direct connection with the socket's peer address. A connection that starts a header and does not
finish it correctly (garbage, an over-long line, bad addresses, too slow) is closed.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_MAX = 16 + 4096  # ours: the spec allows 64 KiB of TLVs; real balancers send a few hundred bytes


class ProxyHeaderError(ValueError):
    """A header that started but is not valid; the connection is closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    src: tuple[str, int] | None  # None: LOCAL (v2) or UNKNOWN (v1): keep the socket's addresses
    dst: tuple[str, int] | None
    length: int  # bytes of the stream the header took


NOT_PROXY = "not a PROXY header"


def parse(data: bytes) -> ProxyHeader | str | None:
    """`data`: the first bytes of a connection. Returns the header, NOT_PROXY, or None (need more).

    Raises ProxyHeaderError for a header that started and is invalid.
    """
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] == V2_SIGNATURE[:n]:
        return _v2(data) if n == len(V2_SIGNATURE) else None
    n = min(len(data), len(V1_PREFIX))
    if data[:n] == V1_PREFIX[:n]:
        return _v1(data) if n == len(V1_PREFIX) else None
    return NOT_PROXY


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError(f"bad port {text[:8]!r}")
    p = int(text)
    if p > 65535:
        raise ProxyHeaderError(f"bad port {p}")
    return p


def _v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyHeaderError("v1 header without CRLF within 107 bytes")
        return None
    parts = data[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None, end + 2)  # the spec: ignore the rest of the line
    if len(parts) != 6:
        raise ProxyHeaderError("v1 header: expected PROXY TCP4|TCP6 src dst sport dport")
    fam, src, dst = parts[1], parts[2], parts[3]
    if fam not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"v1 header: unknown protocol {fam[:8]!r}")
    want = ipaddress.IPv4Address if fam == b"TCP4" else ipaddress.IPv6Address
    addrs = []
    for a in (src, dst):
        try:
            ip = ipaddress.ip_address(a.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise ProxyHeaderError(f"v1 header: bad address {a[:40]!r}") from None
        if not isinstance(ip, want):
            raise ProxyHeaderError(f"v1 header: {a.decode()} is not a {fam.decode()} address")
        addrs.append(str(ip))
    return ProxyHeader(1, (addrs[0], _port(parts[4])), (addrs[1], _port(parts[5])), end + 2)


def _v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 header: version {ver_cmd >> 4}, expected 2")
    cmd = ver_cmd & 0x0F
    if cmd > 1:
        raise ProxyHeaderError(f"v2 header: unknown command {cmd}")
    if 16 + length > V2_MAX:
        raise ProxyHeaderError(f"v2 header: {length} bytes of addresses and TLVs, at most {V2_MAX - 16}")
    if len(data) < 16 + length:
        return None
    total = 16 + length
    if cmd == 0:  # LOCAL: the balancer's own connection (health checks): keep the socket's addresses
        return ProxyHeader(2, None, None, total)
    body = data[16:total]
    af, proto = fam >> 4, fam & 0x0F
    if af == 1:  # AF_INET
        if length < 12:
            raise ProxyHeaderError("v2 header: IPv4 addresses need 12 bytes")
        s, d = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sp, dp = struct.unpack_from("!HH", body, 8)
    elif af == 2:  # AF_INET6
        if length < 36:
            raise ProxyHeaderError("v2 header: IPv6 addresses need 36 bytes")
        s, d = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sp, dp = struct.unpack_from("!HH", body, 32)
    elif af == 0 or af == 3:  # UNSPEC or AF_UNIX: nothing we can use as a client address
        return ProxyHeader(2, None, None, total)
    else:
        raise ProxyHeaderError(f"v2 header: unknown address family {af}")
    if proto not in (0, 1):  # UNSPEC, STREAM; DGRAM makes no sense on a TCP listener
        raise ProxyHeaderError(f"v2 header: transport {proto} is not a stream")
    return ProxyHeader(2, (s, sp), (d, dp), total)


def v1_header(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """The v1 line fabio writes to a `pxyproto=true` TCP upstream: the client, then the listener's address.

    Both addresses must be of one family: IPv4-mapped IPv6 addresses are written as IPv4, and an IPv4
    address beside a real IPv6 one is written IPv4-mapped.
    """
    c, s = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    c = c.ipv4_mapped or c if isinstance(c, ipaddress.IPv6Address) else c
    s = s.ipv4_mapped or s if isinstance(s, ipaddress.IPv6Address) else s
    if c.version == s.version:
        cs, ss = str(c), str(s)
    else:
        cs, ss = (f"::ffff:{x}" if x.version == 4 else str(x) for x in (c, s))
    fam = "TCP4" if c.version == s.version == 4 else "TCP6"
    return f"PROXY {fam} {cs} {ss} {client[1]} {server[1]}\r\n".encode()
