"""The access log (log.access.target=stdout): one line per proxied request in fabio's formats.

The format (`common`, `combined` or a template of `$field` names) is compiled ONCE at startup into a
list of getters, so a request costs one call per field and a join; nothing is parsed per request.
Lines are buffered and written to stdout in batches: at most every 100 ms (a timer armed by the first
buffered line) or as soon as 256 lines wait, so the event loop does one write per batch, not per line.
Off by default: then the proxy holds None and pays nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from router.proxy.paths import normalise_path, upstream_raw_path

COMMON = '$remote_host - - [$time_common] "$request" $response_status $response_body_size'
COMBINED = COMMON + ' "$header.Referer" "$header.User-Agent"'
FLUSH_SECONDS = 0.1
FLUSH_LINES = 256

_FIELD = re.compile(r"\$(header\.[A-Za-z0-9_-]+|[a-z0-9_]+)")


class Tap:
    """Wraps the ASGI send of one request to see the status and count the body bytes (access log only)."""

    __slots__ = ("send", "status", "size")

    def __init__(self, send: Callable) -> None:
        self.send = send
        self.status = 0
        self.size = 0

    def __call__(self, message: dict) -> Awaitable[None]:
        # not async: hand back the real send's awaitable, so the tap adds no coroutine frame per message
        if message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))
        elif message["type"] == "http.response.start":
            self.status = message["status"]
        return self.send(message)


class Entry:
    """What a getter may read about one finished request; the expensive parts are computed on demand."""

    __slots__ = ("scope", "tap", "target", "seconds", "end_ns")

    def __init__(self, scope: dict, tap: Tap, target: Any, seconds: float) -> None:
        self.scope = scope
        self.tap = tap
        self.target = target
        self.seconds = seconds
        self.end_ns = time.time_ns()  # the $time_* fields are when the request ended, as fabio logs them

    def header(self, name: bytes) -> str:
        for k, v in self.scope["headers"]:
            if k == name:
                return v.decode("latin-1")
        return "-"

    def uri(self) -> str:
        raw = self.scope.get("raw_path") or self.scope["path"].encode()
        q = self.scope.get("query_string") or b""
        return (raw + (b"?" + q if q else b"")).decode("latin-1")

    def upstream_uri(self) -> str:
        if self.target is None:
            return "-"
        q = self.scope.get("query_string") or b""
        path = upstream_raw_path(self.target, normalise_path(self.scope["path"]), self.scope)  # as sent
        return path + ("?" + q.decode("latin-1") if q else "")


def _client(e: Entry, i: int) -> str:
    c = e.scope.get("client")
    return str(c[i]) if c else "-"


def _upstream(attr: str) -> Callable[[Entry], str]:
    return lambda e: "-" if e.target is None else str(getattr(e.target, attr))


def _rfc3339(digits: int) -> Callable[[Entry], str]:
    def get(e: Entry) -> str:
        sec, ns = divmod(e.end_ns, 1_000_000_000)
        t = datetime.fromtimestamp(sec).astimezone()
        s = t.strftime("%Y-%m-%dT%H:%M:%S")
        if digits:
            s += "." + f"{ns:09d}"[:digits]  # fixed width, as fabio writes them
        z = t.strftime("%z")
        return s + (z[:3] + ":" + z[3:] if z not in ("+0000", "") else "Z")
    return get


_common_cache: list = [None, ""]


def _time_common(second: int) -> str:
    """Formatting a local time costs microseconds; under load many lines share the same second."""
    if _common_cache[0] != second:
        _common_cache[:] = [second, datetime.fromtimestamp(second).astimezone().strftime("%d/%b/%Y:%H:%M:%S %z")]
    return _common_cache[1]


_GETTERS: dict[str, Callable[[Entry], str]] = {
    "remote_addr": lambda e: f"{_client(e, 0)}:{_client(e, 1)}",
    "remote_host": lambda e: _client(e, 0),
    "remote_port": lambda e: _client(e, 1),
    "request": lambda e: f"{e.scope['method']} {e.uri()} HTTP/{e.scope.get('http_version', '1.1')}",
    "request_args": lambda e: (e.scope.get("query_string") or b"").decode("latin-1"),
    "request_host": lambda e: e.header(b"host"),
    "request_method": lambda e: e.scope["method"],
    "request_scheme": lambda e: e.scope.get("scheme", "http"),
    "request_uri": lambda e: e.uri(),
    "request_url": lambda e: f"{e.scope.get('scheme', 'http')}://{e.header(b'host')}{e.uri()}",
    "request_proto": lambda e: f"HTTP/{e.scope.get('http_version', '1.1')}",
    "response_body_size": lambda e: str(e.tap.size),
    "response_status": lambda e: str(e.tap.status),
    # fabio's response_time_*: seconds, to ms/us/ns precision ("1.111", "1.111111", "1.111111111")
    "response_time_ms": lambda e: f"{e.seconds:.3f}",
    "response_time_us": lambda e: f"{e.seconds:.6f}",
    "response_time_ns": lambda e: f"{e.seconds:.9f}",
    "time_rfc3339": _rfc3339(0),
    "time_rfc3339_ms": _rfc3339(3),
    "time_rfc3339_us": _rfc3339(6),
    "time_rfc3339_ns": _rfc3339(9),
    "time_unix_ms": lambda e: str(e.end_ns // 1_000_000),
    "time_unix_us": lambda e: str(e.end_ns // 1_000),
    "time_unix_ns": lambda e: str(e.end_ns),
    "time_common": lambda e: _time_common(e.end_ns // 1_000_000_000),
    "upstream_addr": lambda e: "-" if e.target is None else f"{e.target.host}:{e.target.port}",
    "upstream_host": _upstream("host"),
    "upstream_port": _upstream("port"),
    "upstream_request_scheme": _upstream("scheme"),
    "upstream_request_uri": lambda e: e.upstream_uri(),
    "upstream_request_url": lambda e: "-" if e.target is None else
    f"{e.target.scheme}://{e.target.host}:{e.target.port}{e.upstream_uri()}",
    "upstream_service": _upstream("service"),
}


def _header_getter(name: str) -> Callable[[Entry], str]:
    key = name.lower().encode("latin-1")
    return lambda e: e.header(key)


def _literal(text: str) -> Callable[[Entry], str]:
    return lambda e: text


def compile_format(fmt: str) -> list[Callable[[Entry], str]]:
    """`common`, `combined` or a template -> getters; raises ValueError naming an unknown field."""
    template = {"common": COMMON, "combined": COMBINED}.get(fmt, fmt)
    parts: list[Callable[[Entry], str]] = []
    pos = 0
    for m in _FIELD.finditer(template):
        if m.start() > pos:
            parts.append(_literal(template[pos:m.start()]))
        name = m.group(1)
        if name.startswith("header."):
            parts.append(_header_getter(name[len("header."):]))
        elif name in _GETTERS:
            parts.append(_GETTERS[name])
        else:
            raise ValueError(f"unknown access log field ${name}")
        pos = m.end()
    if pos < len(template):
        parts.append(_literal(template[pos:]))
    return parts


def _write_stdout(data: bytes) -> None:
    fd = sys.stdout.fileno()
    while data:
        data = data[os.write(fd, data):]


class AccessLog:
    """Formats finished requests and writes them in batches (to stdout unless `write` is given).

    Each write holds whole lines and at most PIPE_BUF bytes: with proxy.workers > 1 every worker writes to
    the same stdout, and a pipe keeps writes of that size whole, so lines of two workers never interleave.
    """

    def __init__(self, fmt: str, write: Callable[[bytes], object] | None = None) -> None:
        self.parts = compile_format(fmt)
        self.write = write or _write_stdout
        self.lines: list[str] = []
        self.timer: asyncio.TimerHandle | None = None

    tap = Tap

    def log(self, scope: dict, tap: Tap, target: Any, seconds: float) -> None:
        e = Entry(scope, tap, target, seconds)
        self.lines.append("".join([p(e) for p in self.parts]))
        if len(self.lines) >= FLUSH_LINES:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines:
            return
        chunk: list[bytes] = []
        size = 0
        try:
            for line in self.lines:
                b = (line + "\n").encode("utf-8", "replace")
                if chunk and size + len(b) > select.PIPE_BUF:
                    self.write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(b)
                size += len(b)
            if chunk:
                self.write(b"".join(chunk))
        except (OSError, ValueError):  # stdout closed: nothing sensible to do but drop the lines
            pass
        self.lines.clear()
