"""fabio's `caupgcn=` on a certificate source: client CA certificates whose *issuer* common name is the
given name are used as CA certificates even though they are not marked as ones (fabio #108: AWS API
Gateway signs its client certificates with a certificate that is no CA).

fabio (Go) flips the parsed certificate's CA flag and key usage in memory before adding it to the client
CA pool; Go then trusts every pool certificate as a root without checking its own signature. OpenSSL
cannot change a loaded certificate, so the same effect is built here, purely: the matching certificate is
re-issued with the same subject, issuer, serial, validity, public key and extensions, but with
`basicConstraints CA:TRUE` and `keyUsage keyCertSign` (fabio's values), signed by a throwaway key. Client
certificates it signed still verify (their signature is checked against the unchanged public key); the
re-issued certificate's own signature is never checked, because the listener then trusts every client CA
certificate as an anchor (OpenSSL's partial-chain flag, which is what Go does with its pool anyway).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router.cert.pairs import CertError

_REPLACED = (x509.BasicConstraints, x509.KeyUsage)
_CERT_SIGN = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                           encipher_only=False, decipher_only=False)


def issuer_cn(cert: x509.Certificate) -> str:
    return next((str(a.value) for a in cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)), "")


def as_ca(cert: x509.Certificate, signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """`cert` re-issued as a CA certificate (CA:TRUE, keyCertSign), everything else kept."""
    b = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
         .public_key(cert.public_key()).serial_number(cert.serial_number)
         .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        if not isinstance(ext.value, _REPLACED):
            b = b.add_extension(ext.value, ext.critical)
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    b = b.add_extension(_CERT_SIGN, critical=True)
    return b.sign(signer, hashes.SHA256())


def upgrade(pem: bytes, common_name: str) -> tuple[bytes, int]:
    """The client CA bundle with fabio's caupgcn applied -> (PEM bundle, how many were upgraded).

    An empty `common_name` changes nothing (fabio's rule). CertError for a bundle that does not parse.
    """
    if not common_name or not pem.strip():
        return pem, 0
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CertError(f"client CA certificates: {e}") from None
    signer: ec.EllipticCurvePrivateKey | None = None
    out, upgraded = [], 0
    for cert in certs:
        if issuer_cn(cert) == common_name:
            signer = signer or ec.generate_private_key(ec.SECP256R1())
            cert = as_ca(cert, signer)
            upgraded += 1
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out), upgraded
