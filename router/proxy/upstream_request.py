"""A request's head for the upstream, built once per request and sent on any connection of its key.

Pure (no I/O): parses the target URL into the pool key (scheme, host, port, verify) and frames the body
(Content-Length or chunked); `resendable` tells the tries whether the request may be sent twice. The
proxy's common case comes as a :class:`HeaderBlock`, its header lines already encoded
(router/proxy/headers.py), and `prepare_block` only puts the request line before it.
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
    if not host or not (port_s.isascii() and port_s.isdigit()):
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



class HeaderBlock:
    """A request's whole head, encoded: request line, header lines (Host among them), the framing of its
    body (none, or its Content-Length among the lines, or `transfer-encoding: chunked` when `chunked`) and
    the blank line. Built by ForwardingHeaders.request_block in one join, for every try of the request: a
    tuple per header, an f-string per line and a join for every try cost more than the rest of the
    upstream client together (docs/datapath.md)."""

    __slots__ = ("head", "chunked")

    def __init__(self, head: bytes, chunked: bool) -> None:
        self.head = head
        self.chunked = chunked


def prepare_block(method: str, key: tuple, block: HeaderBlock, body: AsyncIterator[bytes] | None) -> Prepared:
    """prepare() for a HeaderBlock, for the pool `key` (scheme, host, port, verify): the head is made already;
    `body` is the stream the block's framing was made for (None when it has no body)."""
    return Prepared(method, key, block.head, block.chunked, body is None and method in IDEMPOTENT)
