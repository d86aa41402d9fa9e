"""fabio's `caupgcn=` (router/cert/caupgrade.py): a client CA certificate that is no CA, issued by the named
common name (AWS API Gateway's case, fabio #108), verifies client certificates it signed only with the
option. Real handshakes: a listener's certificates from a `file` source with `clientca=`, Python's ssl client
presenting a client certificate; certificates made here with cryptography (trustme for the server's)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router.cert.caupgrade import upgrade
from router.cert.pairs import CertError
from router.cert.watch import ListenerCerts
from router.config.listeners import CertSourceSpec, Listener
from tests.tls_echo import echo_server

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return b.sign(signer, hashes.SHA256())


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def chain() -> dict[str, bytes]:
    """gateway root (not given to the router) -> signer (CA:FALSE, issuer CN "ApiGateway") -> client."""
    root_key, signer_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    signer = _cert("ApiGateway client signer", "ApiGateway", signer_key, root_key, ca=False)
    client = _cert("client", "ApiGateway client signer", client_key, signer_key, ca=False)
    key = client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return {"signer": _pem(signer), "client": _pem(client), "client_key": key}


def test_upgrade_marks_only_certificates_of_the_named_issuer(chain: dict[str, bytes]) -> None:
    other = trustme.CA().cert_pem.bytes()
    out, n = upgrade(chain["signer"] + other, "ApiGateway")
    assert n == 1
    first, second = x509.load_pem_x509_certificates(out)
    assert first.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert first.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    orig = x509.load_pem_x509_certificate(chain["signer"])
    assert (first.subject, first.issuer, first.serial_number, first.public_key()) == (
        orig.subject, orig.issuer, orig.serial_number, orig.public_key())
    assert _pem(second) == x509.load_pem_x509_certificate(other).public_bytes(serialization.Encoding.PEM)
    assert upgrade(chain["signer"], "") == (chain["signer"], 0)  # no caupgcn: nothing changes (fabio)
    assert upgrade(chain["signer"], "apigateway")[1] == 0  # the name is compared exactly, as fabio does
    with pytest.raises(CertError, match="client CA certificates"):
        upgrade(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "ApiGateway")


@pytest.mark.parametrize(("caupgcn", "accepted"), [("ApiGateway", True), ("", False), ("Someone else", False)])
def test_client_certificate_from_a_non_ca_signer_needs_caupgcn(chain: dict[str, bytes], tmp_path: Path,
                                                               caupgcn: str, accepted: bool) -> None:
    server_ca = trustme.CA()
    leaf = server_ca.issue_cert("a.example.com")
    (tmp_path / "site.pem").write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    (tmp_path / "clientca.pem").write_bytes(chain["signer"])
    (tmp_path / "client.pem").write_bytes(chain["client"] + chain["client_key"])
    spec = CertSourceSpec("c", "file", str(tmp_path / "site.pem"), clientca=str(tmp_path / "clientca.pem"),
                          caupgcn=caupgcn)
    lst = Listener(":0", "127.0.0.1", 0, "https", cert_source=spec)

    async def main() -> bool:
        certs = ListenerCerts(lst)
        sni = await certs.start()
        srv, port = await echo_server(sni.context)
        ctx = ssl.create_default_context()
        server_ca.configure_trust(ctx)
        ctx.load_cert_chain(str(tmp_path / "client.pem"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="a.example.com")
            writer.write(b"ping")
            ok = await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"  # TLS 1.3: a refusal shows on read
            writer.close()
            return ok
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return False
        finally:
            srv.close()
            await certs.stop()

    assert asyncio.run(main()) is accepted
