"""A TLS listener's certificates, kept current: its source is watched and every new set of pairs is
swapped into the listener's SNI context (router/cert/tlsctx.py) for the next handshake."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from router.cert import caupgrade
from router.cert.pairs import CertError
from router.cert.sources import Source, source
from router.cert.tlsctx import SNIContext, TLSSettings
from router.config.listeners import Listener

log = logging.getLogger("router.cert")

FIRST_WAIT = 5.0  # seconds startup waits for a remote source's first certificates before serving anyway


class ListenerCerts:
    """The SNI context of one TLS listener and the task that keeps its certificates current."""

    def __init__(self, listener: Listener, alpn: tuple[str, ...] = ("http/1.1",), src: Source | None = None) -> None:
        assert listener.cert_source is not None
        self.listener = listener
        self.spec = listener.cert_source
        self.source = src or source(self.spec)
        self.alpn = alpn
        self.sni: SNIContext | None = None
        self.task: asyncio.Task | None = None
        self.updates = 0  # certificate sets swapped in, for tests and /api/status
        self.failed_handshakes = 0  # no certificate for the server name (strictmatch) or none at all
        self.names: list[str] = []

    def _no_cert(self, server_name: str | None) -> None:
        self.failed_handshakes += 1
        log.info("listener %s: no certificate for server name %r%s", self.listener, server_name,
                 " (strictmatch)" if self.listener.strict_match else "")

    async def start(self) -> SNIContext:
        """Build the context and load the first certificates: a `file` source that cannot be loaded stops
        startup (as in fabio); other sources may still be empty and fill in later."""
        ca, upgraded = caupgrade.upgrade(await self.source.client_ca(), self.spec.caupgcn)
        if upgraded:
            log.info("listener %s: %d client CA certificate(s) issued by %r used as CA certificates (caupgcn)",
                     self.listener, upgraded, self.spec.caupgcn)
        settings = TLSSettings(self.listener.tls_min, self.listener.tls_max, self.listener.tls_ciphers,
                               self.alpn, ca, ca_anchors=bool(upgraded))
        self.sni = SNIContext(settings, self.listener.strict_match, self._no_cert)
        first = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run(first), name=f"certs {self.spec.name}")
        try:
            await asyncio.wait_for(asyncio.shield(first), FIRST_WAIT)
        except TimeoutError:
            if self.spec.type == "file":
                raise CertError(f"cert source {self.spec.name}: could not load {self.spec.cert}") from None
            log.warning("listener %s: no certificates from source %s yet; TLS handshakes fail until they arrive",
                        self.listener, self.spec.name)
        if first.done() and first.exception() is not None:
            raise first.exception()  # type: ignore[misc]
        return self.sni

    async def _run(self, first: asyncio.Future) -> None:
        try:
            await self._follow(first)
        except CertError as e:
            if not first.done():
                first.set_exception(e)
            else:
                log.error("listener %s: %s", self.listener, e)

    async def _follow(self, first: asyncio.Future) -> None:
        assert self.sni is not None
        async for new in self.source.watch():
            try:
                self.names = self.sni.replace(new)
            except CertError as e:
                log.error("listener %s: certificates from %s not used: %s", self.listener, self.spec.name, e)
                if self.spec.type == "file" and not first.done():
                    first.set_exception(CertError(f"cert source {self.spec.name}: {e}"))
                continue
            self.updates += 1
            log.info("listener %s: certificates for %s", self.listener, ", ".join(self.names) or "(no names)")
            if not first.done():
                first.set_result(None)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.source.close()
