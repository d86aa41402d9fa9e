"""Reading Consul from the dump helper process itself (dump.py), with the watcher's Consul settings.

Why not in the watcher: at 100,000 instances the instances are 100-122 MB of JSON. Read by the watcher,
the bytes went through its event loop (which also proxies and swaps tables) and sat in its heap beside
the decoded objects, and then were copied once more to the helper. Read here, the watcher receives only
what its table and its comparisons need. The standard library's client is enough for a few GETs per
load, and keeps the helper's start light; each thread keeps its own keep-alive connection.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from registry.consul.api import ConsulTLS


class DumpUnavailable(Exception):
    """Consul answered, but not with JSON (an agent or proxy that hides an endpoint)."""

    def __init__(self, path: str, status: int) -> None:
        super().__init__(f"{path}: HTTP {status} without JSON")
        self.status = status


class DumpFetchError(Exception):
    """Consul could not be reached, or the read failed (the watcher reports it as a Consul error)."""


@dataclass(frozen=True)
class ConsulTarget:
    """Where and how to read Consul: picklable, so it crosses to the helper process (api.ConsulAPI.target)."""

    base_url: str  # http(s)://host:port
    query: str = ""  # the consistency mode, e.g. "consistent"
    headers: tuple[tuple[str, str], ...] = ()
    tls: ConsulTLS | None = None
    timeout: float = 300.0


class Reader:
    """GETs against one Consul, one keep-alive connection per thread."""

    def __init__(self, target: ConsulTarget) -> None:
        self.target = target
        self._local = threading.local()
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            u = urlsplit(self.target.base_url)
            if u.scheme == "https":
                verify = (self.target.tls or ConsulTLS()).verify()
                ctx = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
                conn = http.client.HTTPSConnection(u.hostname or "", u.port or 443, timeout=self.target.timeout,
                                                   context=ctx)
            else:
                conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=self.target.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def get(self, path: str, *parts: str) -> bytes:
        """GET `path` + the URL-quoted `parts`; the body of a 200 answer that starts like JSON."""
        full = path + "/".join(quote(p, safe="") for p in parts) + (f"?{self.target.query}" if self.target.query else "")
        for attempt in (0, 1):  # a keep-alive connection the server closed meanwhile: one new one
            conn = self._conn()
            try:
                conn.request("GET", full, headers=dict(self.target.headers))
                resp = conn.getresponse()
                body = resp.read()
                break
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if attempt or not isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    raise DumpFetchError(f"GET {path}: {type(e).__name__}: {e}") from e
        with self._lock:
            self.requests += 1
            self.bytes += len(body)
        if resp.status != 200 or body.lstrip()[:1] not in (b"[", b"{", b"n"):  # n: `null`, an unknown node
            raise DumpUnavailable(path, resp.status)
        return body

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
