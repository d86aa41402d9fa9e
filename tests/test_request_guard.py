"""check_request() on ASGI scopes: every branch, including the framing checks llhttp normally makes first
(so they still hold if the parser changes). The raw-socket behaviour is in tests/test_hostile_http.py."""

from __future__ import annotations

import pytest

from router.proxy.request_guard import NON_ORIGIN_TARGET, check_request


def scope(*headers: tuple[bytes, bytes], path: str = "/public/x", method: str = "GET", version: str = "1.1",
          **extra: object) -> dict:
    return {"type": "http", "method": method, "http_version": version, "path": path,
            "headers": list(headers), **extra}


HOST = (b"host", b"a")


@pytest.mark.parametrize("s", [
    scope(HOST),
    scope(HOST, (b"content-length", b"12"), method="POST"),
    scope(HOST, (b"transfer-encoding", b"chunked"), method="POST"),
    scope(HOST, (b"transfer-encoding", b" Chunked "), method="POST"),
    scope(path="/x", version="1.0"),  # HTTP/1.0 needs no Host
    scope(HOST, path="/caf\u00e9/\u00a0"),  # non-ASCII but not a control character
    scope(HOST, path="*", method="OPTIONS"),
])
def test_accepted(s: dict) -> None:
    result = check_request(s)
    assert result is None or result == (200, "")


@pytest.mark.parametrize(("s", "fragment"), [
    (scope(HOST, (b"content-length", b"3"), (b"transfer-encoding", b"chunked")), "both Content-Length"),
    (scope(HOST, (b"content-length", b"3"), (b"content-length", b"3")), "more than one Content-Length"),
    (scope(HOST, (b"content-length", b"-1"), (b"transfer-encoding", b"chunked")), "both Content-Length"),
    (scope(HOST, (b"transfer-encoding", b"chunked, identity")), "only 'chunked'"),
    (scope(HOST, (b"transfer-encoding", b"xchunked")), "only 'chunked'"),
    (scope(HOST, (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")), "only 'chunked'"),
    (scope(HOST, (b"transfer-encoding", b"chunked"), version="1.0"), "HTTP/1.0"),
    (scope(), "missing Host"),
    (scope(HOST, (b"host", b"b")), "more than one Host"),
    (scope(HOST, **{NON_ORIGIN_TARGET: b"http://a/public/x"}), "absolute-form"),
    (scope(HOST, path="*"), "asterisk-form"),
    (scope(HOST, path="/a\x00b"), "control character"),
    (scope(HOST, path="/a\x7f"), "control character"),
    (scope(HOST, path="/a\u0085"), "control character"),  # C1 (NEL), e.g. from %C2%85
])
def test_refused(s: dict, fragment: str) -> None:
    result = check_request(s)
    assert result is not None
    status, text = result
    assert status == 400 and fragment in text and text.endswith("\n")
