"""The server name of a TLS ClientHello (router/listen/clienthello.py), from real ClientHellos.

The ClientHellos are written by Python's ssl (OpenSSL) into a memory BIO, so they are what a real
client sends; the hostile rows are what a client can send instead.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.listen.clienthello import NotClientHello, server_name


def hello(name: str | None, *, tls13: bool = True, alpn: tuple[str, ...] = ()) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def split_records(data: bytes, at: int) -> bytes:
    """The same handshake carried in two TLS records (RFC 8446 5.1 allows any fragmentation)."""
    body = data[5:5 + int.from_bytes(data[3:5], "big")]
    head = data[:3]
    a, b = body[:at], body[at:]
    return head + len(a).to_bytes(2, "big") + a + head + len(b).to_bytes(2, "big") + b + data[5 + len(body):]


@pytest.mark.parametrize(("name", "kw"), [
    ("db.example.com", {}),
    ("DB.Example.COM", {}),  # host names compare in lower case
    ("a.b.c.example.org", {"tls13": False}),
    ("x" * 60 + ".example.com", {"alpn": ("h2", "http/1.1")}),
])
def test_real_client_hellos(name: str, kw: dict) -> None:
    assert server_name(hello(name, **kw)) == name.lower()


def test_no_sni() -> None:
    assert server_name(hello(None)) == ""


def test_a_client_hello_split_over_two_records() -> None:
    data = hello("split.example.com")
    for at in (1, 3, 4, 40, 100):
        assert server_name(split_records(data, at)) == "split.example.com"


def test_every_truncation_asks_for_more() -> None:
    data = hello("db.example.com")
    for n in range(0, len(data)):
        assert server_name(data[:n]) is None, n
    assert server_name(data + b"trailing application data") == "db.example.com"


@pytest.mark.parametrize(("data", "message"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "record type 71, not a handshake"),
    (b"\x16\x02\x00\x00\x05hello", "not a TLS record"),
    (b"\x16\x03\x01\x00\x00", "TLS record length 0"),
    (b"\x16\x03\x01\xff\xff", "TLS record length 65535"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "handshake type 2, not a ClientHello"),
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "ClientHello of 16777219 bytes"),
    (b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03", "truncated ClientHello"),
])
def test_what_is_not_a_client_hello(data: bytes, message: str) -> None:
    with pytest.raises(NotClientHello, match=message):
        server_name(data)


def _with_sni_body(data: bytes, new_name: bytes) -> bytes:
    """`data`'s ClientHello with its server name replaced by `new_name` (same length), lengths intact."""
    old = b"db.example.com"
    assert len(new_name) == len(old)
    return data.replace(old, new_name)


@pytest.mark.parametrize("bad", [b"db.example.co\x00", b"db/example.com", b"db.example.c\xc3\xa9"])
def test_hostile_server_names_are_refused(bad: bytes) -> None:
    with pytest.raises(NotClientHello):
        server_name(_with_sni_body(hello("db.example.com"), bad))


PREFIXES = (b"", b"\x16\x03\x01", hello("x.example.com")[:60])


@given(st.binary(max_size=300))
def test_any_bytes_give_an_answer_never_a_crash(data: bytes) -> None:
    for prefix in PREFIXES:
        try:
            got = server_name(prefix + data)
        except NotClientHello:
            continue
        assert got is None or isinstance(got, str)
