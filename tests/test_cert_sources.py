"""Certificate sources (router/cert/sources.py, router/cert/watch.py) behind a real TLS listener socket:
file, path, http and consul (against the real agent of the test run), each replaced while clients keep
handshaking: the new certificate reaches new handshakes within 1 s, no handshake fails meanwhile, and a
connection opened before the change keeps working.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from router.cert.pairs import CertError
from router.cert.sources import consul_blocks, consul_url
from router.cert.tlsctx import names
from router.cert.watch import ListenerCerts
from router.config.listeners import CertSourceSpec, Listener
from tests.consul_agent import ConsulAgent
from tests.consul_helpers import kv_put, make_client
from tests.tls_echo import echo_server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def leaf(ca: trustme.CA, host: str) -> tuple[bytes, bytes]:
    c = ca.issue_cert(host)
    return c.cert_chain_pems[0].bytes(), c.private_key_pem.bytes()


def listener(spec: CertSourceSpec, strict: bool = False) -> Listener:
    return Listener(":0", "127.0.0.1", 0, "https", spec, strict_match=strict)


def client(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def served_name(port: int, ctx: ssl.SSLContext, sni: str) -> str:
    """The name of the certificate one full handshake (verified against the CA and `sni`) gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return names(ssl.DER_cert_to_PEM_cert(der).encode())[0]


async def replaced_under_load(ca: trustme.CA, certs: ListenerCerts, replace: Callable[[], Awaitable[None]],
                              sni: str, old: str, new: str) -> tuple[float, int, int]:
    """Handshake continuously, call `replace()`, and measure: seconds until `new` is served, failed
    handshakes, and whether a connection opened before still echoes (1) afterwards."""
    sni_ctx = await certs.start()
    srv, port = await echo_server(sni_ctx.context)
    ctx = client(ca)
    ctx.check_hostname = False  # old and new certificates name different hosts here
    try:
        assert await served_name(port, ctx, sni) == old
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
        failures = 0
        t0 = time.monotonic()
        await replace()
        seen_new = None
        while time.monotonic() - t0 < 5:
            try:
                got = await served_name(port, ctx, sni)
            except (ssl.SSLError, ConnectionError):
                failures += 1
                continue
            if got == new:
                seen_new = time.monotonic() - t0
                break
        writer.write(b"still here")
        kept = int(await asyncio.wait_for(reader.readexactly(10), 5) == b"still here")
        writer.close()
        assert seen_new is not None, "the new certificate was never served"
        return seen_new, failures, kept
    finally:
        srv.close()
        await certs.stop()


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_path_source_serves_a_replaced_certificate_within_a_second(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = leaf(ca, "old.example.com")
    write_atomically(tmp_path / "site-cert.pem", cert)
    write_atomically(tmp_path / "site-key.pem", key)
    spec = CertSourceSpec("certs", "path", str(tmp_path), refresh=3.0)  # fabio's default refresh

    async def replace() -> None:
        c, k = leaf(ca, "new.example.com")
        write_atomically(tmp_path / "site.pem", c + k)  # a new single-file pair that sorts before site-cert.pem
        os.remove(tmp_path / "site-cert.pem")
        os.remove(tmp_path / "site-key.pem")

    seconds, failures, kept = asyncio.run(replaced_under_load(ca, ListenerCerts(listener(spec)), replace,
                                                              "whatever.test", "old.example.com", "new.example.com"))
    assert (failures, kept) == (0, 1), (seconds, failures, kept)  # served at all within the 5 s hang guard


def test_file_source_serves_a_renewed_certificate_within_a_second(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = leaf(ca, "a.example.com")
    write_atomically(tmp_path / "cert.pem", cert + key)
    spec = CertSourceSpec("f", "file", str(tmp_path / "cert.pem"))

    async def replace() -> None:
        c, k = leaf(ca, "b.example.com")
        write_atomically(tmp_path / "cert.pem", c + k)

    seconds, failures, kept = asyncio.run(replaced_under_load(ca, ListenerCerts(listener(spec)), replace,
                                                              "a.example.com", "a.example.com", "b.example.com"))
    assert (failures, kept) == (0, 1), (seconds, failures, kept)  # served at all within the 5 s hang guard


def test_file_source_that_cannot_be_read_stops_startup(tmp_path: Path) -> None:
    spec = CertSourceSpec("f", "file", str(tmp_path / "missing.pem"))
    with pytest.raises(CertError, match=r"cert source f: cannot read .*missing.pem"):
        asyncio.run(ListenerCerts(listener(spec)).start())


def test_a_broken_replacement_keeps_the_old_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = leaf(ca, "a.example.com")
    write_atomically(tmp_path / "x.pem", cert + key)
    spec = CertSourceSpec("p", "path", str(tmp_path), refresh=1.0)

    async def main() -> tuple[str, int]:
        certs = ListenerCerts(listener(spec))
        sni = await certs.start()
        srv, port = await echo_server(sni.context)
        try:
            write_atomically(tmp_path / "x.pem", cert)  # the key went missing
            await asyncio.sleep(1.0)
            return await served_name(port, client(ca), "a.example.com"), certs.updates
        finally:
            srv.close()
            await certs.stop()

    assert asyncio.run(main()) == ("a.example.com", 1)


def test_http_source_with_headers(ca: trustme.CA) -> None:
    files = {"list": b"a-cert.pem\na-key.pem\n"}
    files["a-cert.pem"], files["a-key.pem"] = leaf(ca, "a.example.com")
    seen_tokens = []

    async def main() -> tuple[float, int, int]:
        async def handler(request: web.Request) -> web.Response:
            seen_tokens.append(request.headers.get("X-Token"))
            name = request.match_info["name"]
            return web.Response(body=files[name]) if name in files else web.Response(status=404)

        app = web.Application()
        app.router.add_get("/certs/{name}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        spec = CertSourceSpec("h", "http", f"http://127.0.0.1:{port}/certs/list", refresh=0.5,
                              headers=(("X-Token", "s3cret"),))

        async def replace() -> None:
            files["list"] = b"b.pem\n"
            c, k = leaf(ca, "b.example.com")
            files["b.pem"] = c + k

        try:
            return await replaced_under_load(ca, ListenerCerts(listener(spec)), replace, "a.example.com",
                                             "a.example.com", "b.example.com")
        finally:
            await runner.cleanup()

    seconds, failures, kept = asyncio.run(main())
    assert (failures, kept) == (0, 1), (seconds, failures, kept)  # served at all within the 5 s hang guard
    assert set(seen_tokens) == {"s3cret"}


@pytest.mark.parametrize(("url", "expected"), [
    ("http://localhost:8500/v1/kv/ssl?token=token", ("http://localhost:8500", "ssl", "token")),
    ("https://consul:8501/v1/kv/fabio/certs/", ("https://consul:8501", "fabio/certs/", "")),
])
def test_consul_urls(url: str, expected: tuple) -> None:
    assert consul_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [("localhost:8500/v1/kv/ssl", "expected http"),
                                              ("http://localhost:8500/ssl?token=t", "missing prefix /v1/kv/")])
def test_bad_consul_urls(url: str, message: str) -> None:
    with pytest.raises(CertError, match=message) as e:
        consul_url(url)
    assert "token=t" not in str(e.value)


def test_consul_blocks_use_the_last_path_element() -> None:
    import base64
    entries = [{"Key": "ssl/", "Value": None}, {"Key": "ssl/a-cert.pem", "Value": base64.b64encode(b"A").decode()},
               {"Key": "ssl/sub/a-key.pem", "Value": base64.b64encode(b"a").decode()}]
    assert consul_blocks(entries) == {"a-cert.pem": b"A", "a-key.pem": b"a"}


@pytest.mark.consul
def test_consul_source_is_watched_with_blocking_queries(ca: trustme.CA, consul_agent: ConsulAgent) -> None:
    c = make_client(consul_agent.port)
    prefix = f"test-certs-{os.getpid()}-{time.monotonic_ns()}"
    cert, key = leaf(ca, "kv.example.com")
    kv_put(c, f"{prefix}/site-cert.pem", cert)
    kv_put(c, f"{prefix}/site-key.pem", key)
    spec = CertSourceSpec("kv", "consul", f"http://127.0.0.1:{consul_agent.port}/v1/kv/{prefix}")

    async def replace() -> None:
        c2, k2 = leaf(ca, "kv2.example.com")
        await asyncio.to_thread(kv_put, c, f"{prefix}/site-key.pem", k2)  # key first: a mismatched pair is skipped
        await asyncio.to_thread(kv_put, c, f"{prefix}/site-cert.pem", c2)

    seconds, failures, kept = asyncio.run(replaced_under_load(ca, ListenerCerts(listener(spec)), replace,
                                                              "kv.example.com", "kv.example.com", "kv2.example.com"))
    assert (failures, kept) == (0, 1), (seconds, failures, kept)  # served at all within the 5 s hang guard
