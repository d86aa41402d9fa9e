"""Requests the proxy must refuse rather than forward (issue 7, hostile HTTP; docs/reliability.md).

Two layers, because most framing checks happen in the listener's llhttp parser before the proxy runs:

* the listener (router/listen/http1.py) answers a parser error with llhttp's own reason (``bad request:
  Transfer-Encoding can't be present with Content-Length``), refuses a target without a path, and marks
  a target that is not origin-form (``GET http://host/x``) in the request record (NON_ORIGIN_TARGET).
* :func:`check_request` runs at the top of ``ProxyApp.serve`` for everything the parser accepted. It
  re-checks the header-count framing rules cheaply (so a different parser cannot silently weaken them;
  the syntax of a Content-Length value is left to the parser) and adds the
  rules llhttp does not enforce: exactly one Host on HTTP/1.1, only ``chunked`` as a transfer coding,
  no Transfer-Encoding on HTTP/1.0, no absolute- or asterisk-form targets, no control characters in
  the decoded path.

Header names and values with bytes RFC 9110 forbids never reach the app: llhttp rejects them (the
tests in tests/test_hostile_http.py prove it), so they are not scanned again here; that would cost a
pass over every byte of every header.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange

NON_ORIGIN_TARGET = "router.non_origin_target"  # scope key: the raw target when it does not start with "/"

# C0 controls, DEL and C1 controls (Unicode category Cc) in the percent-decoded path
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

Rejection = tuple[int, str]

_CLOSE = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]


async def send_rejection(out: Exchange, status: int, text: str) -> None:
    """Answer a refused request; a 4xx also closes the connection.

    After a request whose framing we do not trust, whatever follows on the same connection may be a
    smuggled request, so it is not read (the listener drops keep-alive on `connection: close`).
    """
    body = text.encode()
    headers = [(b"content-length", str(len(body)).encode())]
    if status >= 400:
        headers += _CLOSE
    await out.respond(status, headers, body)


def check_request(scope: dict) -> Rejection | None:
    """(status, text) when the request must not be forwarded, else None.

    The fast path is what almost every request looks like: an origin-form printable ASCII path, one
    Host, no Transfer-Encoding and at most one Content-Length. Only requests that fail it pay for the
    detailed checks in :func:`_explain`.
    """
    path = scope["path"]
    names = [h[0] for h in scope["headers"]]
    if (
        path[:1] == "/"
        and path.isascii()
        and path.isprintable()
        and names.count(b"host") == 1
        and b"transfer-encoding" not in names
        and names.count(b"content-length") < 2
        and NON_ORIGIN_TARGET not in scope
    ):
        return None
    return _explain(scope, names)


def _explain(scope: dict, names: list[bytes]) -> Rejection | None:
    """The slow path: say exactly what is wrong, or accept (e.g. a chunked body, a non-ASCII path)."""
    target = scope.get(NON_ORIGIN_TARGET)
    path = scope["path"]
    if target is not None or path[:1] != "/":
        if path == "*" and target is None:
            if scope["method"] == "OPTIONS":
                return 200, ""  # about the proxy itself, as Go's server (and so fabio) answers it
            return 400, "asterisk-form request target is only allowed with OPTIONS\n"
        return 400, "absolute-form request target not accepted: send the path and a Host header\n"
    if _CONTROL.search(path):
        return 400, "control character in the request path\n"

    hosts = names.count(b"host")
    if hosts > 1:
        return 400, "more than one Host header\n"
    if hosts == 0 and scope.get("http_version", "1.1") != "1.0":
        return 400, "missing Host header (required in HTTP/1.1)\n"

    headers = scope["headers"]
    lengths = [v for n, v in headers if n == b"content-length"]
    codings = [v for n, v in headers if n == b"transfer-encoding"]
    if len(lengths) > 1:
        return 400, "more than one Content-Length header\n"
    if codings:
        if lengths:
            return 400, "both Content-Length and Transfer-Encoding\n"
        if scope.get("http_version") == "1.0":
            return 400, "Transfer-Encoding in an HTTP/1.0 request\n"
        if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
            return 400, "unsupported Transfer-Encoding: only 'chunked' is accepted\n"
    return None
