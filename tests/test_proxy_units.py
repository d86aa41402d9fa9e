"""Pure parts of the proxy: path normalisation and header rewriting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from router.headers import ForwardingHeaders
from router.proxy import normalise_path


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/", "/"),
        ("", "/"),
        ("/foo/bar", "/foo/bar"),
        ("/foo/bar/", "/foo/bar/"),
        ("/public/../admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("//a///b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/../../etc", "/etc"),
        ("/a//", "/a/"),
    ],
)
def test_normalise_path(path: str, clean: str) -> None:
    assert normalise_path(path) == clean


def target(**kw: object) -> SimpleNamespace:
    base = {"strip": "", "host_header": "", "host": "10.0.0.1", "port": 8080}
    base.update(kw)
    return SimpleNamespace(**base)


def scope(*headers: tuple[str, str], scheme: str = "http") -> dict:
    return {
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": ("192.0.2.7", 5555),
        "scheme": scheme,
        "http_version": "1.1",
    }


def as_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        assert k not in out, f"duplicate header {k}"
        out[k] = v
    return out


def test_forwarding_headers_added() -> None:
    h, has_body = ForwardingHeaders().request_headers(scope(("host", "example.com")), "example.com", target())
    d = as_dict(h)
    assert d["x-forwarded-for"] == "192.0.2.7"
    assert d["x-real-ip"] == "192.0.2.7"
    assert d["x-forwarded-proto"] == "http"
    assert d["x-forwarded-port"] == "80"
    assert d["x-forwarded-host"] == "example.com"
    assert d["forwarded"] == "for=192.0.2.7; proto=http; httpproto=http/1.1"
    assert d["host"] == "example.com"
    assert d["user-agent"] == ""
    assert has_body is False


def test_xff_appended_and_existing_headers_kept() -> None:
    s = scope(("host", "h:8000"), ("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "1.1.1.1"),
              ("x-forwarded-proto", "https"))
    d = as_dict(ForwardingHeaders().request_headers(s, "h:8000", target())[0])
    assert d["x-forwarded-for"] == "1.1.1.1, 192.0.2.7"
    assert d["x-real-ip"] == "1.1.1.1"
    assert d["x-forwarded-proto"] == "https"
    assert d["x-forwarded-port"] == "8000"
    assert d["forwarded"].startswith("for=192.0.2.7; proto=https")


def test_hop_by_hop_removed_and_connection_cannot_drop_forwarding_headers() -> None:
    s = scope(("host", "h"), ("connection", "keep-alive, X-Forwarded-For, X-Secret"), ("keep-alive", "5"),
              ("x-secret", "1"), ("te", "trailers"), ("transfer-encoding", "chunked"), ("x-keep", "yes"))
    h, has_body = ForwardingHeaders().request_headers(s, "h", target())
    d = as_dict(h)
    for gone in ("connection", "keep-alive", "te", "transfer-encoding", "x-secret"):
        assert gone not in d
    assert d["x-forwarded-for"] == "192.0.2.7" and d["x-keep"] == "yes"
    assert has_body is True


def test_strip_sets_prefix_and_host_option() -> None:
    d = as_dict(ForwardingHeaders().request_headers(scope(("host", "h")), "h", target(strip="/api"))[0])
    assert d["x-forwarded-prefix"] == "/api"
    d = as_dict(ForwardingHeaders().request_headers(scope(("host", "h")), "h", target(host_header="dst"))[0])
    assert d["host"] == "10.0.0.1:8080"
    d = as_dict(ForwardingHeaders().request_headers(scope(("host", "h")), "h", target(host_header="api.int"))[0])
    assert d["host"] == "api.int"


def test_response_hop_by_hop_removed() -> None:
    raw = [(b"Content-Type", b"text/plain"), (b"Connection", b"close, X-Drop"), (b"X-Drop", b"1"),
           (b"Transfer-Encoding", b"chunked"), (b"X-Keep", b"1")]
    assert ForwardingHeaders.response_headers(raw) == [(b"content-type", b"text/plain"), (b"x-keep", b"1")]
