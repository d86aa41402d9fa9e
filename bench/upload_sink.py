"""A tiny HTTP/1.1 upload sink for the streaming benchmark.

nginx answers ``return 200`` before it has read a request body (and drops
``Expect: 100-continue`` uploads at once), so it cannot prove that an upload
actually traversed a proxy. This server reads every body byte (Content-Length
or chunked), discards it, and answers ``received N`` so the harness can check
that N equals what the client sent.

Blocking sockets with one thread per connection, because that is what reads
fastest here: ~1.3 GB/s on loopback, where asyncio streams managed ~0.5 GB/s
and would have capped every proxy's upload figure.

Run: ``python bench/upload_sink.py --port 8081`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import contextlib
import socketserver
from typing import BinaryIO

CHUNK = 1 << 20


def drain_exact(rfile: BinaryIO, remaining: int, buf: memoryview) -> int:
    """Reads and discards exactly ``remaining`` bytes; returns how many arrived."""
    got = 0
    while remaining > 0:
        n = rfile.readinto(buf[: min(remaining, len(buf))])
        if not n:
            break
        got += n
        remaining -= n
    return got


def drain_chunked(rfile: BinaryIO, buf: memoryview) -> int:
    """Reads and discards a chunked body (and its trailers); returns the payload size."""
    total = 0
    while True:
        size = int(rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return total
        total += drain_exact(rfile, size, buf)
        rfile.readline(8)  # CRLF after each chunk


def read_head(rfile: BinaryIO) -> tuple[str, dict[str, str]] | None:
    """Returns the request line and lower-cased headers, or None at end of stream."""
    request_line = rfile.readline(65536).decode("latin-1").strip()
    if not request_line:
        return None
    headers: dict[str, str] = {}
    while True:
        line = rfile.readline(65536).decode("latin-1").strip()
        if not line:
            return request_line, headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


class SinkHandler(socketserver.StreamRequestHandler):
    """Serves keep-alive requests on one connection until the peer closes it."""

    rbufsize = CHUNK

    def handle(self) -> None:
        buf = memoryview(bytearray(CHUNK))
        with contextlib.suppress(ConnectionError, ValueError):
            while (head := read_head(self.rfile)) is not None:
                request_line, headers = head
                if headers.get("expect", "").lower() == "100-continue":
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    received = drain_chunked(self.rfile, buf)
                else:
                    received = drain_exact(self.rfile, int(headers.get("content-length", "0")), buf)
                body = f"received {received}\n".encode()
                close = headers.get("connection", "").lower() == "close" or request_line.endswith("HTTP/1.0")
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n".encode()
                    + (b"Connection: close\r\n" if close else b"")
                    + b"\r\n"
                    + body
                )
                if close:
                    return


class SinkServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP upload sink on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with SinkServer(("127.0.0.1", args.port), SinkHandler) as server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
