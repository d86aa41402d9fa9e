"""The server name (SNI) of a TLS ClientHello, read from the first bytes of a connection without
terminating TLS: `tcp+sni` and `https+tcp+sni` listeners route on it and then pass the untouched bytes on.

Pure and incremental: fed the bytes read so far, it answers "need more", the name ("" when the
ClientHello has no server_name extension), or raises for bytes that are not a TLS ClientHello. A
ClientHello split over several TLS records (allowed by RFC 8446 5.1, and what some clients do once
post-quantum key shares make it large) is reassembled; fabio reads one record of at most 1024 bytes.
"""

from __future__ import annotations

MAX_HELLO = 64 * 1024  # bytes of handshake we are willing to buffer before the name must be known


class NotClientHello(ValueError):
    """The bytes are not a TLS ClientHello (or it is malformed)."""


def _handshake(data: bytes) -> bytes | None:
    """The handshake bytes carried by the leading handshake records, once there are enough of them."""
    out = bytearray()
    pos = 0
    need = None
    while True:
        if len(data) - pos < 5:
            return None
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if ctype != 0x16:
            raise NotClientHello(f"TLS record type {ctype}, not a handshake (22)")
        if major != 3:
            raise NotClientHello("not a TLS record (version major is not 3)")
        if length == 0 or length > 16384 + 2048:
            raise NotClientHello(f"TLS record length {length}")
        if len(data) - pos - 5 < length:
            return None
        out += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if need is None and len(out) >= 4:
            if out[0] != 0x01:
                raise NotClientHello(f"handshake type {out[0]}, not a ClientHello (1)")
            need = 4 + int.from_bytes(out[1:4], "big")
            if need > MAX_HELLO:
                raise NotClientHello(f"ClientHello of {need} bytes")
        if need is not None and len(out) >= need:
            return bytes(out[:need])


def server_name(data: bytes) -> str | None:
    """SNI host name of the ClientHello at the start of `data`; None if more bytes are needed."""
    hs = _handshake(data)
    if hs is None:
        return None
    return _parse_hello(memoryview(hs)[4:])


def _parse_hello(m: memoryview) -> str:
    def take(n: int) -> memoryview:
        nonlocal m
        if len(m) < n:
            raise NotClientHello("truncated ClientHello")
        head, m = m[:n], m[n:]
        return head

    def vec(width: int) -> memoryview:
        return take(int.from_bytes(take(width), "big"))

    take(2 + 32)  # legacy_version, random
    if len(vec(1)) > 32:
        raise NotClientHello("session id longer than 32 bytes")
    if len(vec(2)) % 2:
        raise NotClientHello("odd cipher suite list")
    vec(1)  # compression methods
    if not m:
        return ""  # no extensions
    exts = vec(2)
    if m:
        raise NotClientHello("bytes after the extensions")
    name = ""
    seen = set()
    while exts:
        if len(exts) < 4:
            raise NotClientHello("truncated extension")
        etype, elen = int.from_bytes(exts[0:2], "big"), int.from_bytes(exts[2:4], "big")
        body, exts = exts[4:4 + elen], exts[4 + elen:]
        if len(body) < elen:
            raise NotClientHello("truncated extension")
        if etype in seen:
            raise NotClientHello(f"extension {etype} twice")
        seen.add(etype)
        if etype == 0:
            name = _sni(body)
    return name


def _sni(body: memoryview) -> str:
    if len(body) < 2 or int.from_bytes(body[0:2], "big") != len(body) - 2:
        raise NotClientHello("bad server_name extension")
    items = body[2:]
    while items:
        if len(items) < 3:
            raise NotClientHello("bad server_name entry")
        kind, n = items[0], int.from_bytes(items[1:3], "big")
        value, items = items[3:3 + n], items[3 + n:]
        if len(value) < n:
            raise NotClientHello("bad server_name entry")
        if kind == 0:
            try:
                host = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                raise NotClientHello("server name is not ASCII") from None
            if not host or any(c in host for c in "\x00/ \\") :
                raise NotClientHello("bad server name")
            return host.lower().rstrip(".")
    return ""
