"""A loopback upstream that speaks raw bytes: each accepted connection is served by `_serve` in a thread of its
own, for tests that need an instance to misbehave in ways no HTTP server library allows (a head and then no
body, a connection held open or dropped at a chosen moment)."""

from __future__ import annotations

import socket
import threading


class RawUpstream:
    """Subclasses define `_serve(conn, n)`; `n` counts the connections accepted so far (1 for the first)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        raise NotImplementedError

    @staticmethod
    def read_head(conn: socket.socket, data: bytes = b"") -> tuple[bytes, bytes] | None:
        """(the next request's head, the bytes after it) from `data` and then `conn`; None if it closed first."""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def close(self) -> None:
        """Stops accepting and closes every connection it accepted."""
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
