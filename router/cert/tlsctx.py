"""SSL contexts for TLS listeners: one per certificate, chosen per handshake by an SNI callback.

Python's ssl can load a certificate only from a file, so each PEM pair is written to a private temporary
file (in /dev/shm where there is one), loaded and removed at once. Every context of a listener gets the
same settings (versions, ciphers, ALPN, client CAs): OpenSSL keeps the protocol settings of the context
a connection started on but takes the certificate, the ALPN choice and the client CA store from the one
the SNI callback switches to.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.x509.oid import NameOID

from router.cert.pairs import CertError, Pair
from router.cert.store import EMPTY, CertSet

log = logging.getLogger("router.cert")

_VERSIONS = {0x0300: ssl.TLSVersion.SSLv3, 0x0301: ssl.TLSVersion.TLSv1, 0x0302: ssl.TLSVersion.TLSv1_1,
             0x0303: ssl.TLSVersion.TLSv1_2, 0x0304: ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """What a listener's options ask of every context (router/config/listeners.py's Listener)."""

    min_version: int = 0
    max_version: int = 0
    ciphers: tuple[int, ...] = ()
    alpn: tuple[str, ...] = ("http/1.1",)
    client_ca: bytes = b""  # PEM; non-empty: clients must present a certificate signed by one of them
    ca_anchors: bool = False  # every client CA certificate is a trust anchor, as in Go (caupgcn=, caupgrade.py)


@cache
def _cipher_names() -> dict[int, str]:
    """IANA cipher suite ID -> OpenSSL name, for every suite this OpenSSL knows."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    except ssl.SSLError:
        ctx.set_ciphers("ALL")
    return {c["id"] & 0xFFFF: c["name"] for c in ctx.get_ciphers()}


@cache
def cipher_ids() -> dict[str, int]:
    """OpenSSL cipher name -> IANA ID (Forwarded: tlscipher=0xc02f)."""
    return {name: cid for cid, name in _cipher_names().items()}


def openssl_cipher_list(ids: Sequence[int]) -> str:
    """`tlsciphers=` IDs -> an OpenSSL cipher string (TLS 1.3 suites are not configurable: skipped, as Go)."""
    names = _cipher_names()
    out = []
    for cid in ids:
        if 0x1301 <= cid <= 0x1305:
            continue
        if cid not in names:
            raise CertError(f"tlsciphers: 0x{cid:04x} is not a cipher suite this router's OpenSSL has")
        out.append(names[cid])
    return ":".join(out)


def base_context(settings: TLSSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if settings.min_version:
        ctx.minimum_version = _VERSIONS[settings.min_version]
    if settings.max_version:
        ctx.maximum_version = _VERSIONS[settings.max_version]
    if settings.ciphers:
        text = openssl_cipher_list(settings.ciphers)
        if text:
            ctx.set_ciphers(text + ":@SECLEVEL=0" if any(c in (0x0005, 0xC007, 0xC011, 0x000A, 0xC012)
                                                        for c in settings.ciphers) else text)
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    if settings.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=settings.client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as e:
            raise CertError(f"client CA certificates: {e}") from None
        if settings.ca_anchors:
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.options |= ssl.OP_NO_RENEGOTIATION if hasattr(ssl, "OP_NO_RENEGOTIATION") else 0
    # One TLS 1.3 session ticket per handshake, as Go's servers (fabio, Traefik) send, not OpenSSL's two:
    # each costs an encryption and a record on every new connection, and one suffices to resume
    ctx.num_tickets = 1
    return ctx


def _load_pair(ctx: ssl.SSLContext, pair: Pair) -> None:
    where = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="router-cert-", suffix=".pem", dir=where)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pair.cert.rstrip(b"\n") + b"\n" + pair.key)
        ctx.load_cert_chain(path)
    except ssl.SSLError as e:
        raise CertError(f"invalid certificate {pair.name}: {e.reason or e}") from None
    finally:
        os.unlink(path)


def names(cert_pem: bytes) -> list[str]:
    """The leaf certificate's subject CN and DNS subject alternative names (fabio's name index)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise CertError(f"not a PEM certificate: {e}") from None
    out = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if isinstance(a.value, str)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out += san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    return out


def build_set(pairs: Sequence[Pair], settings: TLSSettings) -> CertSet[ssl.SSLContext]:
    """One context per pair, indexed by its names; CertError naming the pair that fails."""
    entries = []
    for p in pairs:
        ctx = base_context(settings)
        _load_pair(ctx, p)
        try:
            entries.append((ctx, names(p.cert)))
        except CertError as e:
            raise CertError(f"certificate {p.name}: {e}") from None
    return CertSet.build(entries)


class SNIContext:
    """The context a TLS listener serves with: its SNI callback hands each handshake the certificate
    picked from the current set, which :meth:`replace` swaps without touching open connections."""

    def __init__(self, settings: TLSSettings, strict: bool, on_fail: Callable[[str | None], None] | None = None
                 ) -> None:
        self.settings = settings
        self.strict = strict
        self.current: CertSet[ssl.SSLContext] = EMPTY
        self.on_fail = on_fail
        self.context = base_context(settings)
        self.context.sni_callback = self._pick

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        ctx = self.current.pick(server_name, self.strict)
        if ctx is None:
            if self.on_fail is not None:
                self.on_fail(server_name)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME if server_name else ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        sslobj.context = ctx
        return None

    def replace(self, pairs: Sequence[Pair]) -> list[str]:
        """Build the contexts of `pairs` and serve them from the next handshake; the names, for the log."""
        new = build_set(pairs, self.settings)
        self.current = new
        return sorted(new.names)
