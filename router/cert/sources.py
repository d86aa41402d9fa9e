"""Certificate sources (`proxy.cs`): where a TLS listener's certificates come from, watched for changes.

Each source yields the whole current list of certificate/key pairs whenever it changes (never the same
list twice in a row); the listener's SNI context swaps them in (router/cert/tlsctx.py). fabio's four
testable types, with their rules:

- `file`: `cert=` (and `key=`, default the same file) is one pair. fabio reads it once; we re-read it
  when its size, mtime or inode changes (checked every 250 ms), so a renewed certificate needs no
  restart (fabio #355, #286).
- `path`: every `*.pem` under the directory `cert=` (recursively, dot files skipped, files over 1 MiB
  skipped), paired by router/cert/pairs.py. Re-read every `refresh=` (3s), and at once when a stat of
  the files (every 250 ms) shows a change, so a replaced file is served within a second.
- `http`: `cert=` is the URL of a text file listing file names, one per line, fetched from the same
  directory, every `refresh=`; `hdr=` headers are sent with each request.
- `consul`: `cert=http://host:8500/v1/kv/<prefix>[?token=...]`: every key under the prefix, by its last
  path element, watched with blocking queries (a change is served as soon as Consul answers).

`clientca=` is read the same way once at startup: its certificates verify client certificates, and
clients must then present one (fabio: RequireAndVerifyClientCert).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from router.cert.pairs import CertError, Pair, pairs
from router.config.listeners import CertSourceSpec

log = logging.getLogger("router.cert")

MAX_FILE = 1 << 20  # fabio's cert.MaxSize
STAT_EVERY = 0.25  # seconds between cheap change checks of file and path sources
MIN_REFRESH = 1.0  # fabio: "Refresh cannot be less than one second to prevent busy loops"


Blocks = dict[str, bytes]


# ----------------------------------------------------------------------------- reading


def _fingerprint(paths: list[str]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((p, None))
    return tuple(out)


def _pem_files(root: str) -> list[str]:
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in sorted(files):
            if f.endswith(".pem") and not f.startswith("."):
                found.append(os.path.join(d, f))
    return found


def read_path(root: str) -> Blocks:
    """fabio's loadPath: the `.pem` files under `root` (a missing directory is empty, not an error)."""
    out: Blocks = {}
    if not os.path.isdir(root):
        return out
    for p in _pem_files(root):
        try:
            if os.path.getsize(p) > MAX_FILE:
                log.warning("cert: %s is larger than 1 MiB; skipped", p)
                continue
            with open(p, "rb") as f:
                out[p] = f.read()
        except OSError as e:
            raise CertError(f"cannot read {p}: {e.strerror}") from None
    return out


def read_file_pair(cert: str, key: str) -> list[Pair]:
    try:
        with open(cert, "rb") as f:
            c = f.read()
        with open(key or cert, "rb") as f:
            k = f.read()
    except OSError as e:
        raise CertError(f"cannot read {e.filename}: {e.strerror}") from None
    return [Pair(os.path.basename(cert), c, k)]


async def read_url_list(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> Blocks:
    """fabio's loadURL: the list at `url`, then each listed file from the list's directory."""
    base = url.rsplit("/", 1)[0] + "/" if urlsplit(url).path not in ("", "/") else url
    resp = await client.get(url, headers=headers)
    if resp.status_code != 200:
        raise CertError(f"{_shown(url)}: HTTP {resp.status_code}")
    out: Blocks = {}
    for name in resp.text.split("\n"):
        name = name.strip()
        if not name:
            continue
        r = await client.get(base + name, headers=headers)
        if r.status_code != 200:
            raise CertError(f"{_shown(base + name)}: HTTP {r.status_code}")
        out[name] = r.content
    return out


def _shown(url: str) -> str:
    """A URL for messages: without its query (a Consul URL carries ?token=)."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, "", ""))


def consul_url(url: str) -> tuple[str, str, str]:
    """`http://host:8500/v1/kv/<prefix>?token=t` -> (base URL, prefix, token); CertError if not such a URL."""
    p = urlsplit(url)
    if p.scheme not in ("http", "https") or not p.netloc:
        raise CertError(f"consul cert source {url!r}: expected http(s)://host:port/v1/kv/<prefix>")
    if not p.path.startswith("/v1/kv/"):
        raise CertError(f"consul cert source {_shown(url)}: missing prefix /v1/kv/")
    token = (parse_qs(p.query).get("token") or [""])[0]
    return f"{p.scheme}://{p.netloc}", p.path[len("/v1/kv/"):], token


def consul_blocks(entries: list[dict]) -> Blocks:
    """A recursive KV read -> {last path element: value} (fabio: path.Base(key)); folders skipped."""
    out: Blocks = {}
    for e in entries:
        key = e.get("Key", "")
        if key.endswith("/") or e.get("Value") is None:
            continue
        out[key.rsplit("/", 1)[-1]] = base64.b64decode(e["Value"])
    return out


# ----------------------------------------------------------------------------- sources


class Source:
    """A certificate source: `watch()` yields the full pair list each time it changes."""

    def __init__(self, spec: CertSourceSpec) -> None:
        self.spec = spec

    async def watch(self) -> AsyncIterator[list[Pair]]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield []

    async def client_ca(self) -> bytes:
        """PEM text of the client CA certificates (`clientca=`), b"" when there are none."""
        return b""

    async def close(self) -> None:
        return None


def _changed(last: list[Pair] | None, new: list[Pair]) -> bool:
    return last is None or [(p.name, p.cert, p.key) for p in last] != [(p.name, p.cert, p.key) for p in new]


async def _poll_files(name: str, files: Callable[[], list[str]], read: Callable[[], list[Pair]],
                      refresh: float | None, strict_start: bool) -> AsyncIterator[list[Pair]]:
    """The file and path sources: stat the files every STAT_EVERY (cheap), read them when their
    fingerprint moved (or every `refresh` s), and yield the pairs when they differ from the last ones. A bad
    read keeps the last certificates; with `strict_start` it stops startup when there are none yet."""
    last: list[Pair] | None = None
    seen: tuple | None = None
    loop = asyncio.get_running_loop()
    next_read = 0.0
    while True:
        fp = _fingerprint(files())
        if fp != seen or (refresh is not None and loop.time() >= next_read):
            if refresh is not None:
                next_read = loop.time() + refresh
            try:
                new = read()
            except CertError as e:
                if strict_start and last is None:  # at startup: fabio stops too
                    raise CertError(f"cert source {name}: {e}") from None
                log.error("cert source %s: %s; keeping the certificates it had", name, e)
            else:
                seen = fp
                if _changed(last, new):
                    last = new
                    yield new
        await asyncio.sleep(STAT_EVERY)


class FileSource(Source):
    def watch(self) -> AsyncIterator[list[Pair]]:
        files = [self.spec.cert, self.spec.key or self.spec.cert]
        return _poll_files(self.spec.name, lambda: files, lambda: read_file_pair(self.spec.cert, self.spec.key),
                           None, strict_start=True)

    async def client_ca(self) -> bytes:
        if not self.spec.clientca:
            return b""
        try:
            with open(self.spec.clientca, "rb") as f:
                return f.read()
        except OSError as e:
            raise CertError(f"cert source {self.spec.name}: cannot read clientca {self.spec.clientca}: "
                            f"{e.strerror}") from None


class PathSource(Source):
    def watch(self) -> AsyncIterator[list[Pair]]:
        d = self.spec.cert
        return _poll_files(self.spec.name, lambda: _pem_files(d) if os.path.isdir(d) else [],
                           lambda: pairs(read_path(d)), max(self.spec.refresh, MIN_REFRESH), strict_start=False)

    async def client_ca(self) -> bytes:
        if not self.spec.clientca:
            return b""
        blocks = read_path(self.spec.clientca) if os.path.isdir(self.spec.clientca) else {}
        if not blocks and os.path.isfile(self.spec.clientca):
            with open(self.spec.clientca, "rb") as f:
                blocks = {self.spec.clientca: f.read()}
        return b"\n".join(blocks[k] for k in sorted(blocks))


class HTTPSource(Source):
    def __init__(self, spec: CertSourceSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec)
        self.client = client or httpx.AsyncClient(timeout=10.0)
        self.headers = dict(spec.headers)

    async def watch(self) -> AsyncIterator[list[Pair]]:
        refresh = max(self.spec.refresh, MIN_REFRESH)
        last: list[Pair] | None = None
        while True:
            try:
                new = pairs(await read_url_list(self.client, self.spec.cert, self.headers))
            except (CertError, httpx.HTTPError) as e:
                log.error("cert source %s: %s; keeping the certificates it had", self.spec.name, e)
            else:
                if _changed(last, new):
                    last = new
                    yield new
            await asyncio.sleep(refresh)

    async def client_ca(self) -> bytes:
        if not self.spec.clientca:
            return b""
        blocks = await read_url_list(self.client, self.spec.clientca, self.headers)
        return b"\n".join(blocks[k] for k in sorted(blocks))

    async def close(self) -> None:
        await self.client.aclose()


class ConsulSource(Source):
    WAIT = "60s"

    def __init__(self, spec: CertSourceSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec)
        self.base, self.prefix, self.token = consul_url(spec.cert)
        self.client = client or httpx.AsyncClient(timeout=75.0)

    async def _read(self, prefix: str, token: str, index: int) -> tuple[Blocks, int]:
        params = {"recurse": "", "consistent": ""}
        if index:
            params.update(index=str(index), wait=self.WAIT)
        headers = {"X-Consul-Token": token} if token else {}
        resp = await self.client.get(f"{self.base}/v1/kv/{prefix}", params=params, headers=headers)
        new_index = int(resp.headers.get("X-Consul-Index", "0") or 0)
        if resp.status_code == 404:
            return {}, new_index
        if resp.status_code != 200:
            raise CertError(f"Consul answered {resp.status_code} for {self.base}/v1/kv/{prefix}")
        return consul_blocks(resp.json()), new_index

    async def watch(self) -> AsyncIterator[list[Pair]]:
        index = 0
        last: list[Pair] | None = None
        backoff = 0.1
        while True:
            try:
                blocks, new_index = await self._read(self.prefix, self.token, index)
            except (CertError, httpx.HTTPError, ValueError) as e:
                log.warning("cert source %s: %s; retrying", self.spec.name, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 3.0)
                continue
            backoff = 0.1
            if new_index == index:
                await asyncio.sleep(0.05)  # an answer without a change: never spin on a misbehaving agent
            index = new_index if new_index >= index else 0  # Consul's rule: an index going back resets
            index = max(index, 1)
            try:
                new = pairs(blocks)
            except CertError as e:
                log.error("cert source %s: %s; keeping the certificates it had", self.spec.name, e)
                continue
            if _changed(last, new):
                last = new
                yield new

    async def client_ca(self) -> bytes:
        if not self.spec.clientca:
            return b""
        base, prefix, token = consul_url(self.spec.clientca)
        saved = self.base
        self.base = base
        try:
            blocks, _ = await self._read(prefix, token, 0)
        finally:
            self.base = saved
        return b"\n".join(blocks[k] for k in sorted(blocks))

    async def close(self) -> None:
        await self.client.aclose()


SOURCES: dict[str, Callable[[CertSourceSpec], Source]] = {
    "file": FileSource, "path": PathSource, "http": HTTPSource, "consul": ConsulSource,
}


def source(spec: CertSourceSpec) -> Source:
    try:
        return SOURCES[spec.type](spec)
    except KeyError:
        raise CertError(f"cert source {spec.name}: type={spec.type} is not supported") from None
