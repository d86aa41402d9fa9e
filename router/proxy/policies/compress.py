"""Response compression: fabio's ``proxy.gzip.contenttype`` plus zstd and brotli, and the ``compress=`` option.

fabio (proxy/gzip) compresses a response with gzip when the client's ``Accept-Encoding`` mentions gzip,
the response carries no ``Content-Encoding`` and its ``Content-Type`` matches the configured regexp; it
adds ``Vary: Accept-Encoding`` to every response while that is on. We do the same, and also (ours, see
docs/compat.md):

* zstd and brotli when the client accepts them, chosen by the client's q-values, ties going to our order
  (zstd, br, gzip, or the route's ``compress=`` list); ``gzip;q=0`` is a refusal, not an acceptance;
* never for ``Cache-Control: no-transform``, for bodies shorter than ``proxy.compress.minsize``, for
  HEAD, 1xx/204/206/304 answers, or for ranges;
* a strong ``ETag`` becomes weak (the bytes differ from the upstream's) and ``Accept-Ranges`` is dropped;
* a gzip answer to a client that does not accept gzip is decoded (Go's transport does this for fabio when
  the client sent no Accept-Encoding, and asks upstreams for gzip itself; we do it on compressing routes
  and ask for nothing);
* a body of known length up to BUFFER_MAX is compressed in one piece and sent with a Content-Length
  (as Go's server does for small bodies); anything else is streamed, each upstream chunk compressed and
  flushed on its own, so server-sent events still arrive event by event.

The compressors release the GIL: bodies from OFFLOAD_MIN up are compressed in a thread, so one large
response does not hold up the other requests of the worker.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import zstandard

from router.table.policyopts import ENCODINGS

__all__ = ["ENCODINGS", "DEFAULT_TYPES", "negotiate", "Plan", "plan", "Encoder", "sniff"]

# fabio's example in fabio.properties: text, JavaScript, JSON, fonts, XML and +json/+xml vendor types.
DEFAULT_TYPES = r"^(text/.*|application/(javascript|json|font-woff|xml)|.*\+(json|xml))(;.*)?$"
BUFFER_MAX = 8 << 20
UNGZIP = "-gzip"  # plan(): decode a gzip answer for a client that accepts no encoding
_DECODE_STEP = 1 << 20  # decoded bytes per step: a small, highly compressed chunk cannot blow up memory
OFFLOAD_MIN = 64 << 10
_LEVEL = {"gzip": 6, "br": 4, "zstd": 3}  # the speed/ratio points nginx, Caddy and Traefik default to


def negotiate(accept: str, allowed: tuple[str, ...]) -> str:
    """The encoding of ``allowed`` the client prefers (RFC 9110 12.5.3), "" when it accepts none of them."""
    if not accept:
        return ""
    q: dict[str, float] = {}
    for part in accept.split(","):
        name, _, params = part.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        weight = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    weight = float(v.strip())
                except ValueError:
                    weight = 0.0
        if name == "x-gzip":
            name = "gzip"
        q[name] = weight
    star = q.get("*", 0.0)
    best, best_q = "", 0.0
    for enc in allowed:
        w = q.get(enc, star)
        if w > best_q:
            best, best_q = enc, w
    return best


class Plan:
    """Settings of a route's compression: its encodings and the content types it compresses."""

    __slots__ = ("encodings", "types", "min_size")

    def __init__(self, encodings: tuple[str, ...], types: re.Pattern[str], min_size: int) -> None:
        self.encodings = encodings
        self.types = types
        self.min_size = min_size


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def plan(p: Plan, method: str, accept: str, status: int,
         headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str]:
    """Response headers with Vary added, and the encoding to use ("" = send the body as it is)."""
    vary = _get(headers, b"vary")
    if vary is None:
        headers = [*headers, (b"vary", b"Accept-Encoding")]
    elif b"accept-encoding" not in vary.lower() and vary.strip() != b"*":
        headers = [(n, v + b", Accept-Encoding" if n == b"vary" else v) for n, v in headers]
    if method == "HEAD" or status < 200 or status in (204, 206, 304):
        return headers, ""
    ce = _get(headers, b"content-encoding")
    cc = _get(headers, b"cache-control")
    if cc is not None and b"no-transform" in cc.lower():
        return headers, ""
    if ce is not None and ce.strip().lower() in (b"gzip", b"x-gzip") and not negotiate(accept, ("gzip",)):
        # a gzip answer for a client that does not take gzip is decoded (as Go's transport does for fabio)
        return headers, UNGZIP if _get(headers, b"content-range") is None else ""
    enc = negotiate(accept, p.encodings)
    if not enc:
        return headers, ""
    if ce is not None and ce.strip().lower() not in (b"", b"identity"):
        return headers, ""
    cl = _get(headers, b"content-length")
    if cl is not None and cl.isdigit() and int(cl) < p.min_size:
        return headers, ""
    if _get(headers, b"content-range") is not None:
        return headers, ""
    ct = _get(headers, b"content-type")
    if ct is not None and not p.types.search(ct.decode("latin-1")):
        return headers, ""
    if ct is None and (cl is None or not cl.isdigit() or int(cl) > BUFFER_MAX):
        return headers, ""  # no type to judge, and no whole body to sniff one from before the headers go
    return headers, enc


def _compressor(enc: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes], Callable[[], bytes]]:
    """(compress a chunk, flush what is pending, finish the stream) for one response."""
    if enc == "gzip":
        z = zlib.compressobj(_LEVEL["gzip"], zlib.DEFLATED, 31)
        return z.compress, lambda: z.flush(zlib.Z_SYNC_FLUSH), z.flush
    if enc == "br":
        b = brotli.Compressor(quality=_LEVEL["br"])
        return b.process, b.flush, b.finish
    zc = zstandard.ZstdCompressor(level=_LEVEL["zstd"]).compressobj()
    return zc.compress, lambda: zc.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK), zc.flush


def compress_all(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        z = zlib.compressobj(_LEVEL["gzip"], zlib.DEFLATED, 31)
        return z.compress(data) + z.flush()
    if enc == "br":
        return brotli.compress(data, quality=_LEVEL["br"])
    return zstandard.ZstdCompressor(level=_LEVEL["zstd"]).compress(data)


_HTML = (b"<!doctype html", b"<html", b"<head", b"<script", b"<iframe", b"<h1", b"<div", b"<font", b"<table",
         b"<a", b"<style", b"<title", b"<b", b"<body", b"<br", b"<p", b"<!--")


def sniff(data: bytes) -> bytes:
    """A Content-Type for a body that came without one: the text/binary part of Go's DetectContentType,
    which fabio's gzip handler applies before it judges the type."""
    head = data[:512].lstrip(b"\t\n\x0c\r ")
    low = head[:14].lower()
    for sig in _HTML:
        if low.startswith(sig) and len(head) > len(sig) and head[len(sig)] in b" >":
            return b"text/html; charset=utf-8"
    if head.startswith(b"<?xml"):
        return b"text/xml; charset=utf-8"
    if head.startswith(b"%PDF-"):
        return b"application/pdf"
    if any(b <= 0x08 or b == 0x0B or 0x0E <= b <= 0x1A or 0x1C <= b <= 0x1F for b in data[:512]):
        return b"application/octet-stream"
    return b"text/plain; charset=utf-8"


def _weak_etag(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A strong ETag made weak, and Accept-Ranges dropped: ranges of the encoded body are not served."""
    return [(n, b"W/" + v if n == b"etag" and v[:2] != b"W/" else v) for n, v in headers if n != b"accept-ranges"]


class Encoder:
    """Sends one upstream response compressed with ``enc``; counts bytes in and out on ``counters``."""

    __slots__ = ("enc", "types", "counters")

    def __init__(self, enc: str, types: re.Pattern[str], counters: Any) -> None:
        self.enc = enc
        self.types = types
        self.counters = counters

    async def send(self, out: Any, resp: Any, headers: list[tuple[bytes, bytes]], buffer_all: bool) -> None:
        """Write the answer on ``out``, the request's Exchange (router/proxy/exchange.py)."""
        if self.enc == UNGZIP:
            await self._send_decoded(out, resp, headers, buffer_all)
            return
        cl = _get(headers, b"content-length")
        known = cl is not None and cl.isdigit() and int(cl) <= BUFFER_MAX
        if known or buffer_all:
            await self._send_whole(out, resp, headers)
        else:
            await self._send_stream(out, resp, headers)

    async def _send_whole(self, out: Any, resp: Any, headers: list[tuple[bytes, bytes]]) -> None:
        data = b"".join([chunk async for chunk in resp.content.iter_any()])
        if _get(headers, b"content-type") is None:
            ctype = sniff(data)
            headers = [*headers, (b"content-type", ctype)]
            if not self.types.search(ctype.decode()):
                await out.respond(resp.status, headers, data)
                return
        if len(data) >= OFFLOAD_MIN:
            packed = await asyncio.to_thread(compress_all, self.enc, data)
        else:
            packed = compress_all(self.enc, data)
        c = self.counters
        c.compressed_in += len(data)
        c.compressed_out += len(packed)
        headers = [h for h in _weak_etag(headers) if h[0] != b"content-length"]
        headers += [(b"content-encoding", self.enc.encode()), (b"content-length", str(len(packed)).encode())]
        await out.respond(resp.status, headers, packed)

    @staticmethod
    async def _send_decoded(out: Any, resp: Any, headers: list[tuple[bytes, bytes]], buffer_all: bool) -> None:
        """The gzip answer decoded, streamed (or whole, with its length, for an HTTP/1.0 client)."""
        d = zlib.decompressobj(31)

        def decode(chunk: bytes) -> list[bytes]:
            parts = [d.decompress(chunk, _DECODE_STEP)]
            while d.unconsumed_tail:
                parts.append(d.decompress(d.unconsumed_tail, _DECODE_STEP))
            return parts

        headers = [h for h in _weak_etag(headers) if h[0] not in (b"content-length", b"content-encoding")]
        if buffer_all:
            parts = [p for chunk in [c async for c in resp.content.iter_any()] for p in decode(chunk)]
            body = b"".join([*parts, d.flush()])
            headers.append((b"content-length", str(len(body)).encode()))
            await out.respond(resp.status, headers, body)
            return
        out.start(resp.status, headers)
        async for chunk in resp.content.iter_any():
            for part in decode(chunk):
                if part:
                    await out.write(part)
        tail = d.flush()
        if tail:
            await out.write(tail)
        await out.end()

    async def _send_stream(self, out: Any, resp: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """Each upstream chunk compressed and flushed on its own: a server-sent event leaves when it comes."""
        compress, flush, finish = _compressor(self.enc)
        headers = [h for h in _weak_etag(headers) if h[0] != b"content-length"]
        headers.append((b"content-encoding", self.enc.encode()))
        out.start(resp.status, headers)
        c = self.counters
        async for chunk in resp.content.iter_any():
            packed = compress(chunk) + flush()
            c.compressed_in += len(chunk)
            c.compressed_out += len(packed)
            await out.write(packed)
        tail = finish()
        c.compressed_out += len(tail)
        if tail:
            await out.write(tail)
        await out.end()
