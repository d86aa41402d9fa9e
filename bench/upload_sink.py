"""A tiny HTTP/1.1 upload sink for the streaming benchmark.

nginx answers ``return 200`` before it has read a request body (and drops
``Expect: 100-continue`` uploads at once), so it cannot prove that an upload
actually traversed a proxy. This server reads every body byte (Content-Length
or chunked), discards it, and answers ``received N`` so the harness can check
that N equals what the client sent.

Run: ``python bench/upload_sink.py --port 8081`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

CHUNK = 1 << 20


async def _drain_exact(reader: asyncio.StreamReader, remaining: int) -> int:
    """Reads and discards exactly ``remaining`` bytes; returns how many arrived."""
    got = 0
    while remaining > 0:
        data = await reader.read(min(remaining, CHUNK))
        if not data:
            break
        got += len(data)
        remaining -= len(data)
    return got


async def _drain_chunked(reader: asyncio.StreamReader) -> int:
    """Reads and discards a chunked body (and its trailers); returns the payload size."""
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return total
        total += await _drain_exact(reader, size)
        await reader.readexactly(2)  # CRLF after each chunk


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """Returns the request line and lower-cased headers of one request head."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serves keep-alive requests on one connection until the peer closes it."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            request_line, headers = _parse_head(head)
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                received = await _drain_chunked(reader)
            else:
                received = await _drain_exact(reader, int(headers.get("content-length", "0")))
            body = f"received {received}\n".encode()
            close = headers.get("connection", "").lower() == "close" or request_line.endswith("HTTP/1.0")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(body)}\r\n".encode()
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\n"
                + body
            )
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int) -> None:
    """Listens on 127.0.0.1:port forever."""
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=CHUNK)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # the project depends on it; plain asyncio works too, only slower

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
