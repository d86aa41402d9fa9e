"""Requests the proxy must refuse rather than forward (issue 7, hostile HTTP; docs/reliability.md).

Two layers, because most framing checks happen in uvicorn's httptools (llhttp) parser before the app
runs:

* :class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with two additions: a parser error
  is answered with llhttp's own reason (``bad request: Transfer-Encoding can't be present with
  Content-Length``) instead of uvicorn's generic text, and a request target that is not origin-form
  (``GET http://host/x``) is marked in the scope, since uvicorn keeps only its path.
* :func:`check_request` runs at the top of ``ProxyApp.handle`` for everything the parser accepted. It
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

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


def _has_path(target: bytes) -> bool:
    try:
        return httptools.parse_url(target).path is not None
    except httptools.HttpParserInvalidURLError:
        return False


class _RecordingParser(httptools.HttpRequestParser):
    """llhttp's request parser, remembering why it rejected the input so the 400 can say so."""

    error = ""

    def feed_data(self, data: bytes) -> None:
        try:
            super().feed_data(data)
        except httptools.HttpParserUpgrade:
            raise
        except httptools.HttpParserError as e:
            self.error = self.error or str(e)  # a callback may have set a better reason
            raise


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a specific 400 text and non-origin targets marked in the scope."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.parser = self.new_parser()

    def new_parser(self) -> httptools.HttpRequestParser:
        parser = _RecordingParser(self)
        try:  # as uvicorn does: answer the first of pipelined requests even after a parse error
            parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # older httptools
            pass
        return parser

    def send_400_response(self, msg: str) -> None:
        reason = getattr(self.parser, "error", "")
        super().send_400_response(f"bad request: {reason}\n" if reason else msg)

    def on_headers_complete(self) -> None:
        if self.url[:1] != b"/" and self.url != b"*":  # asterisk-form is visible as path "*"
            if not _has_path(self.url):  # authority-form (CONNECT), or absolute-form without a path:
                self.parser.error = "request target has no path"  # type: ignore[attr-defined]
                raise ValueError(self.parser.error)  # uvicorn would fail on it; llhttp turns this into a 400
            self.scope[NON_ORIGIN_TARGET] = self.url  # type: ignore[literal-required]
        super().on_headers_complete()
