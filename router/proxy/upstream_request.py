"""A request's head for the upstream, built once per request and sent on any connection of its key.

Pure (no I/O): parses the target URL into the pool key (scheme, host, port, verify) and frames the body
(Content-Length or chunked); `resendable` tells the tries whether the request may be sent twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Prepared:
    """A request's head, built once and sent on whichever connection of its key: see prepare()."""

    __slots__ = ("method", "key", "head", "chunked", "resendable")

    def __init__(self, method: str, key: tuple, head: bytes, chunked: bool, resendable: bool) -> None:
        self.method = method
        self.key = key  # (scheme, host, port, verify): the pool this request's connections come from
        self.head = head
        self.chunked = chunked
        self.resendable = resendable  # idempotent and its body can be rebuilt: may be sent twice


def prepare(method: str, url: str, headers: Sequence[tuple[str, str]], body: AsyncIterator[bytes] | bytes | None,
            *, verify_tls: bool = True) -> Prepared:
    """The request head for `url` (HTTP/1.1, Host from the URL unless given, framing for `body`)."""
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    hostport, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    host, _, port_s = hostport.rpartition(":")
    if not host or not port_s.isdigit():
        host, port_s = hostport, ("443" if scheme == "https" else "80")
    host = host.strip("[]")
    key = (scheme, host, int(port_s), verify_tls or scheme != "https")

    lines = [f"{method} {target} HTTP/1.1\r\n"]
    has_host = has_length = False
    for n, v in headers:
        if n == "host":
            has_host = True
        elif n == "content-length":
            has_length = True
        lines.append(f"{n}: {v}\r\n")
    if not has_host:
        lines.append(f"host: {hostport}\r\n")
    if isinstance(body, bytes):
        if not has_length:
            lines.append(f"content-length: {len(body)}\r\n")
    elif body is not None and not has_length:
        lines.append("transfer-encoding: chunked\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1", "replace")
    chunked = body is not None and not isinstance(body, bytes) and not has_length
    resendable = (body is None or isinstance(body, bytes)) and method in IDEMPOTENT
    return Prepared(method, key, head, chunked, resendable)

