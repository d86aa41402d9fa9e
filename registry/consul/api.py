"""A thin async Consul HTTP client with Consul's documented blocking-query rules.

Why our own and not python-consul2 here: the watcher needs per-request read timeouts tied to the
`wait` value, case-insensitive index headers, and the index rules below; httpx gives all of that in a
few lines. The bytes go through registry/consul/transport.py (httpx's own transport cost ~1.4 ms of CPU
per request, more than the rest of a change). python-consul2 is used by the tests to register services, as any user's tooling would.
"""

from __future__ import annotations

import base64
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from registry.consul.transport import UpstreamTransport


class ConsulError(Exception):
    """Consul could not be reached or answered with an error."""


def consul_base_url(addr: str) -> str:
    """`registry.consul.addr` -> base URL: `host:port`, `http://host:port` or `https://host:port`."""
    addr = addr.strip()
    scheme = "http"
    for prefix in ("http://", "https://"):
        if addr.startswith(prefix):
            scheme = prefix[:-3]
            addr = addr[len(prefix) :]
    addr = addr.split("/", 1)[0]  # fabio drops anything after the host
    return f"{scheme}://{addr}"


def next_index(previous: int, returned: int) -> int:
    """The index to send with the next blocking query.

    Consul's rules: if the index went backwards (snapshot restore, agent restart with other data, a KV
    delete of the highest index) start over with 0, which returns at once with the current state; and
    never block on an index below 1, because 0 returns immediately and would make the loop spin.
    """
    if returned < previous:
        return 0
    return max(returned, 1)


class Backoff:
    """Capped exponential backoff with jitter, reset after a success."""

    def __init__(self, first: float = 0.1, cap: float = 3.0) -> None:
        self.first = first
        self.cap = cap
        self.current = 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        # +-20% jitter so several routers do not hammer a recovering agent in lockstep
        return self.current * (0.8 + 0.4 * (time.monotonic() * 1000 % 1))

    def reset(self) -> None:
        self.current = 0.0


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    index: int
    headers: httpx.Headers


@dataclass(frozen=True, slots=True)
class ConsulTLS:
    """`registry.consul.tls.*`: how to verify an https:// Consul and which client certificate to show."""

    cafile: str = ""
    capath: str = ""
    certfile: str = ""
    keyfile: str = ""
    insecureskipverify: bool = False

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify`: True (system CAs) when nothing is set, else one SSL context with everything."""
        if not (self.cafile or self.capath or self.certfile or self.insecureskipverify):
            return True
        ctx = ssl.create_default_context(cafile=self.cafile or None, capath=self.capath or None)
        if self.insecureskipverify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile or None)
        return ctx


class ConsulAPI:
    """Async access to the Consul endpoints the router uses."""

    def __init__(
        self,
        addr: str,
        token: str = "",
        *,
        consistency: str = "consistent",
        wait: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ConsulTLS | None = None,
    ) -> None:
        self.base_url = consul_base_url(addr)
        self.consistency = consistency  # "consistent" | "stale" | ""
        self.wait = wait
        headers = {"X-Consul-Token": token} if token else {}
        # Uncompressed: the router normally talks to its local agent, where gzip only burns CPU on both
        # sides (the 30,000-instance dump is 36 MB; Consul's gzip plus our inflate added ~0.25 s per read).
        headers["Accept-Encoding"] = "identity"
        self.headers = dict(headers)  # for the dump helper, which reads Consul itself (dumpfetch.py)
        self.tls = tls
        verify = (tls or ConsulTLS()).verify()
        # Our own transport (the default) also serves the GETs without httpx's client layer (see `get`);
        # any other (a test's) is used through httpx for everything.
        self._direct: UpstreamTransport | None = None
        if transport is None:
            transport = self._direct = UpstreamTransport(verify if isinstance(verify, ssl.SSLContext) else None)
        self._header_list = [(k.lower(), v) for k, v in headers.items()]
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(10.0, read=self.read_timeout(wait)),
            transport=transport,
        )

    @staticmethod
    def read_timeout(wait: float) -> float:
        """Consul may hold a blocking query for wait + wait/16 of jitter; allow that plus a margin."""
        return wait * 17 / 16 + 5.0

    async def close(self) -> None:
        await self._client.aclose()

    def _params(self, index: int | None, extra: dict[str, Any] | None = None,
                wait: float | None = None) -> dict[str, Any]:
        params: dict[str, Any] = dict(extra or {})
        if self.consistency:
            params[self.consistency] = ""
        if index is not None:
            params["index"] = str(max(index, 0))
            params["wait"] = f"{int((self.wait if wait is None else wait) * 1000)}ms"
        return params

    def url(self, path: str, index: int | None = None, params: dict[str, Any] | None = None,
            wait: float | None = None) -> str:
        """The full URL of a read: the path (percent-encoded where it must be) and the query string."""
        query = urlencode(self._params(index, params, wait))
        return f"{self.base_url}{quote(path, safe='/%:@!$&()*+,;=~')}{'?' + query if query else ''}"

    async def get(self, path: str, *, index: int | None = None, params: dict[str, Any] | None = None,
                  decode: bool = True, wait: float | None = None) -> Response:
        """GET a JSON endpoint; with `index` it is a blocking query. 404 is returned, not raised (KV).

        `wait`: this blocking query's own wait, instead of `registry.consul.wait` (registry/consul/hot.py).
        `decode=False` leaves the body as bytes, for a caller that decodes it elsewhere (registry/consul/dump.py).

        Every change costs several of these (the watches' answers, a re-read), so they skip httpx's client
        layer when the transport is ours: 0.11-0.14 ms of CPU per request against a local agent instead of
        0.73-0.75 ms (URL parsing and merging, cookies, the Response model; docs/discovery.md).
        """
        wait = self.wait if wait is None else wait
        url = self.url(path, index, params, wait)
        read = self.read_timeout(wait)
        try:
            if self._direct is not None:
                status, raw, content = await self._direct.fetch("GET", url, self._header_list, None, read)
                headers = httpx.Headers(raw)
            else:
                r = await self._client.get(url, timeout=httpx.Timeout(10.0, read=read))
                status, headers, content = r.status_code, r.headers, r.content
        except httpx.HTTPError as e:
            raise ConsulError(f"GET {path}: {type(e).__name__}: {e}") from e
        idx_text = headers.get("x-consul-index", "0")
        try:
            idx = int(idx_text)
        except ValueError:
            idx = 0
        if status == 404:
            return Response(404, None, idx, headers)
        if status != 200:
            text = content.decode("utf-8", "replace")
            raise ConsulError(f"GET {path}: HTTP {status}: {text.strip()[:200]}")
        if not decode:
            return Response(200, content, idx, headers)
        try:
            body = orjson.loads(content)
        except ValueError as e:
            raise ConsulError(f"GET {path}: invalid JSON: {e}") from e
        return Response(200, body, idx, headers)

    async def agent_self(self) -> dict[str, Any]:
        r = await self.get("/v1/agent/self")
        return r.body or {}

    async def kv_get(self, key: str) -> tuple[str | None, int]:
        """One KV value (None if absent) and its ModifyIndex (0 if absent)."""
        r = await self.get(f"/v1/kv/{key.lstrip('/')}")
        if r.status == 404 or not r.body:
            return None, 0
        item = r.body[0]
        raw = base64.b64decode(item.get("Value") or b"")
        return raw.decode("utf-8", errors="replace"), int(item.get("ModifyIndex", 0))

    async def put(self, path: str, body: Any = None) -> None:
        """PUT to an agent endpoint (service register/deregister, check update); raises ConsulError."""
        try:
            r = await self._client.put(path, json=body)
        except httpx.HTTPError as e:
            raise ConsulError(f"PUT {path}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise ConsulError(f"PUT {path}: HTTP {r.status_code}: {r.text.strip()[:200]}")

    async def kv_cas(self, key: str, value: str, cas: int) -> bool:
        try:
            r = await self._client.put(f"/v1/kv/{key.lstrip('/')}", params={"cas": str(cas)}, content=value.encode())
        except httpx.HTTPError as e:
            raise ConsulError(f"PUT kv {key}: {e}") from e
        if r.status_code != 200:
            raise ConsulError(f"PUT kv {key}: HTTP {r.status_code}: {r.text.strip()[:200]}")
        return r.text.strip() == "true"


def decode_kv(items: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """A recursive KV listing -> [(key, text)] in Consul's (alphabetical) order; folders skipped."""
    out = []
    for item in items or []:
        key = item.get("Key", "")
        if key.endswith("/") and not item.get("Value"):
            continue
        raw = base64.b64decode(item.get("Value") or b"")
        out.append((key, raw.decode("utf-8", errors="replace")))
    return out
