"""Certificates of TLS listeners: fabio's SNI rules (router/cert/store.py), its file pairing
(router/cert/pairs.py) and real handshakes against the SNI context (router/cert/tlsctx.py).

Certificates are made per test with trustme; the handshakes are Python's ssl client and openssl s_client.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import pytest
import trustme

from router.cert.pairs import CertError, Pair, pairs
from router.cert.store import CertSet
from router.cert.tlsctx import SNIContext, TLSSettings, cipher_ids, names
from tests.tls_echo import echo_server

# ----------------------------------------------------------------------------- the pick (pure)

SET = CertSet.build([("first", ["a.example.com"]), ("wild", ["*.example.com"]), ("deep", ["*.b.example.com"]),
                     ("two", ["x.org", "y.org"]), ("multi", ["*.*.example.net"])])


@pytest.mark.parametrize(("server_name", "strict", "expected"), [
    ("a.example.com", False, "first"),
    ("A.Example.COM.", False, "first"),  # lower case, trailing dots dropped
    ("c.example.com", False, "wild"),
    ("z.b.example.com", False, "deep"),  # the longest wildcard: *.b.example.com before *.example.com
    ("y.org", False, "two"),
    ("q.r.example.net", False, "multi"),  # fabio's loop also tries *.*.<rest>
    ("nothing.test", False, "first"),  # no match: the first (default) certificate
    ("nothing.test", True, None),  # ... unless strictmatch
    (None, False, "first"),  # no SNI
    (None, True, None),
    ("example.com", True, None),  # a wildcard needs a label in its place
])
def test_pick(server_name: str | None, strict: bool, expected: str | None) -> None:
    assert SET.pick(server_name, strict) == expected


def test_one_certificate_serves_every_name_without_strictmatch() -> None:
    one = CertSet.build([("only", ["a.example.com"])])
    assert one.pick("other.test", False) == "only" and one.pick("other.test", True) is None
    assert CertSet.build([]).pick("a.example.com", False) is None  # no certificates: the handshake fails


def test_a_later_certificate_claiming_a_name_wins() -> None:
    s = CertSet.build([("old", ["a.example.com", "b.example.com"]), ("new", ["b.example.com"])])
    assert s.pick("b.example.com", True) == "new" and s.pick("a.example.com", True) == "old"


@pytest.mark.parametrize(("blocks", "expected"), [
    ({"a-cert.pem": b"A", "a-key.pem": b"a"}, [Pair("a-cert.pem", b"A", b"a")]),
    ({"b.pem": b"Bb", "a-key.pem": b"a", "a-cert.pem": b"A"}, [Pair("a-cert.pem", b"A", b"a"), Pair("b.pem", b"Bb", b"Bb")]),
    ({"readme.txt": b"x", "c.pem": b"C"}, [Pair("c.pem", b"C", b"C")]),  # other files are ignored
    ({}, []),
])
def test_pairs_by_fabios_file_names(blocks: dict, expected: list) -> None:
    assert pairs(blocks) == expected


@pytest.mark.parametrize("blocks", [{"a-cert.pem": b"A"}, {"a-key.pem": b"a"}])
def test_half_a_pair_is_an_error_naming_the_missing_file(blocks: dict) -> None:
    with pytest.raises(CertError, match="a-(key|cert).pem is missing"):
        pairs(blocks)


# ----------------------------------------------------------------------------- real handshakes


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pair(ca: trustme.CA, *hosts: str, name: str = "") -> Pair:
    leaf = ca.issue_cert(*hosts)
    return Pair(name or f"{hosts[0]}.pem", leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())


REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)  # a failed handshake, as the client sees it


def client_ctx(ca: trustme.CA, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext, name: str | None) -> tuple[str, str, tuple]:
    """(subject CN served, TLS version, cipher) of one handshake with SNI `name` (verification by name off)."""
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    obj = writer.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    served = names(ssl.DER_cert_to_PEM_cert(der).encode())
    return served[0], obj.version(), obj.cipher()


def test_each_server_name_gets_its_certificate(ca: trustme.CA) -> None:
    async def main() -> list:
        sni = SNIContext(TLSSettings(), strict=False)
        sni.replace([pair(ca, "a.example.com", name="1.pem"), pair(ca, "*.example.com", name="2.pem"),
                     pair(ca, "b.test", name="3.pem")])
        srv, port = await echo_server(sni.context)
        try:
            return [(await handshake(port, client_ctx(ca), n))[0]
                    for n in ("a.example.com", "zzz.example.com", "b.test", "unknown.test", None)]
        finally:
            srv.close()

    assert asyncio.run(main()) == ["a.example.com", "*.example.com", "b.test", "a.example.com", "a.example.com"]


def test_strictmatch_fails_the_handshake_for_an_unknown_name(ca: trustme.CA) -> None:
    failed = []

    async def main() -> tuple:
        sni = SNIContext(TLSSettings(), strict=True, on_fail=failed.append)
        sni.replace([pair(ca, "a.example.com")])
        srv, port = await echo_server(sni.context)
        try:
            ok = (await handshake(port, client_ctx(ca), "a.example.com"))[0]
            for name in ("other.test", None):
                with pytest.raises(REFUSED):
                    await handshake(port, client_ctx(ca), name)
            return ok, failed
        finally:
            srv.close()

    assert asyncio.run(main()) == ("a.example.com", ["other.test", None])


def test_openssl_s_client_sees_the_sni_certificate_and_alpn(ca: trustme.CA) -> None:
    async def main() -> list[str]:
        sni = SNIContext(TLSSettings(alpn=("h2", "http/1.1")), strict=False)
        sni.replace([pair(ca, "a.example.com", name="1.pem"), pair(ca, "db.example.org", name="2.pem")])
        srv, port = await echo_server(sni.context)
        try:
            p = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "db.example.org",
                "-alpn", "h2,http/1.1", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = (await asyncio.wait_for(p.communicate(), 20))[0].decode()
            return [line.strip() for line in out.splitlines()]
        finally:
            srv.close()

    lines = asyncio.run(main())
    pem = "\n".join(lines[lines.index("-----BEGIN CERTIFICATE-----"):lines.index("-----END CERTIFICATE-----") + 1])
    assert names(pem.encode()) == ["db.example.org"]
    assert "ALPN protocol: h2" in lines


@pytest.mark.parametrize(("settings", "client", "version", "cipher"), [
    (TLSSettings(max_version=0x0303), {}, "TLSv1.2", None),
    (TLSSettings(min_version=0x0304), {}, "TLSv1.3", None),
    (TLSSettings(max_version=0x0303, ciphers=(0xC02B,)), {}, "TLSv1.2", 0xC02B),  # ECDHE-ECDSA-AES128-GCM-SHA256
    (TLSSettings(max_version=0x0303, ciphers=(0xC02C, 0x1301)), {}, "TLSv1.2", 0xC02C),  # 1.3 suites skipped, as Go
])
def test_tlsmin_tlsmax_tlsciphers(ca: trustme.CA, settings: TLSSettings, client: dict, version: str,
                                  cipher: int | None) -> None:
    async def main() -> tuple:
        sni = SNIContext(settings, strict=False)
        sni.replace([pair(ca, "a.example.com")])
        srv, port = await echo_server(sni.context)
        try:
            return await handshake(port, client_ctx(ca, **client), "a.example.com")
        finally:
            srv.close()

    _, got_version, got_cipher = asyncio.run(main())
    assert got_version == version
    if cipher is not None:
        assert cipher_ids()[got_cipher[0]] == cipher


def test_tlsmin_refuses_an_older_client(ca: trustme.CA) -> None:
    async def main() -> None:
        sni = SNIContext(TLSSettings(min_version=0x0304), strict=False)
        sni.replace([pair(ca, "a.example.com")])
        srv, port = await echo_server(sni.context)
        try:
            with pytest.raises(REFUSED):
                await handshake(port, client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2), "a.example.com")
        finally:
            srv.close()

    asyncio.run(main())


def test_client_certificates_are_required_with_clientca(ca: trustme.CA) -> None:
    client_ca = trustme.CA()
    person = client_ca.issue_cert("client@example.com")

    async def main() -> str:
        sni = SNIContext(TLSSettings(client_ca=client_ca.cert_pem.bytes()), strict=False)
        sni.replace([pair(ca, "a.example.com", name="1.pem"), pair(ca, "b.example.com", name="2.pem")])
        srv, port = await echo_server(sni.context)
        try:
            with pytest.raises(REFUSED):  # TLS 1.3: refused at the first read
                await handshake(port, client_ctx(ca), "b.example.com")
            ctx = client_ctx(ca)
            person.configure_cert(ctx)
            other = trustme.CA().issue_cert("intruder@example.com")
            bad = client_ctx(ca)
            other.configure_cert(bad)
            with pytest.raises(REFUSED):
                await handshake(port, bad, "b.example.com")
            return (await handshake(port, ctx, "b.example.com"))[0]  # the switched-to context verifies too
        finally:
            srv.close()

    assert asyncio.run(main()) == "b.example.com"


def test_a_broken_pair_is_refused_naming_it(ca: trustme.CA) -> None:
    good = pair(ca, "a.example.com")
    sni = SNIContext(TLSSettings(), strict=False)
    with pytest.raises(CertError, match="invalid certificate broken.pem"):
        sni.replace([Pair("broken.pem", good.cert, b"not a key")])
    other = pair(ca, "b.example.com")
    with pytest.raises(CertError, match="invalid certificate mixed.pem"):
        sni.replace([Pair("mixed.pem", good.cert, other.key)])  # a key that is not the certificate's
    assert sni.current.items == ()  # nothing half-replaced
