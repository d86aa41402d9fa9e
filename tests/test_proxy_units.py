"""Pure parts of the proxy: path normalisation and header rewriting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from router.proxy.headers import ForwardingHeaders
from router.proxy.paths import normalise_path


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
    d = as_dict(ForwardingHeaders().request_headers(scope(("host", "h")), "h", target(host_header="10.0.0.1"))[0])
    assert d["host"] == "10.0.0.1"  # host=dst is resolved to the URL's host when the table is built
    d = as_dict(ForwardingHeaders().request_headers(scope(("host", "h")), "h", target(host_header="api.int"))[0])
    assert d["host"] == "api.int"


def test_response_hop_by_hop_removed() -> None:
    raw = [(b"Content-Type", b"text/plain"), (b"Connection", b"close, X-Drop"), (b"X-Drop", b"1"),
           (b"Transfer-Encoding", b"chunked"), (b"X-Keep", b"1")]
    assert ForwardingHeaders.response_headers(raw) == [(b"content-type", b"text/plain"), (b"x-keep", b"1")]


# ---- the upstream path in the client's encoding (strip=/prepend= applied to scope["raw_path"])


def raw_scope(raw: str) -> dict:
    """What uvicorn puts in the scope for a request target's path: the raw bytes and their decoding."""
    from urllib.parse import unquote

    return {"raw_path": raw.encode(), "path": unquote(raw), "headers": []}


@pytest.mark.parametrize(
    ("strip", "prepend", "raw", "sent"),
    [
        ("", "", "/a%2Fb%25c", "/a%2Fb%25c"),         # nothing changes: the raw path as it came
        ("/foo", "", "/foo/a%25b", "/a%25b"),          # %25 stays %25 (was sent as a bare "%")
        ("/foo", "", "/foo/a%2Fb", "/a%2Fb"),          # %2F stays %2F (was decoded to "/")
        ("/foo", "", "/foo/x%20y/%7E", "/x%20y/%7E"),  # the client's spelling of every escape is kept
        ("/foo", "", "/foo", "/"),
        ("/foo", "", "/foo/", "/"),
        ("/foo/", "", "/foo/a%2F", "/a%2F"),
        ("/foo", "", "/fool/a%2F", "/fool/a%2F"),     # no segment match: not stripped
        ("/foo", "", "/%66oo/a%2Fb", "/a%2Fb"),        # the strip prefix itself sent encoded
        ("/f o", "", "/f%20o/a%2Fb", "/a%2Fb"),        # a strip= with a character that must be encoded
        ("", "/in", "/v2/a%2Fb", "/in/v2/a%2Fb"),
        ("", "/in%", "/v2/a", "/in%25/v2/a"),          # prepend= is a decoded path (as in fabio): % -> %25
        ("/foo", "/bar", "/foo/a%25b%2F", "/bar/a%25b%2F"),
        ("/foo", "", "/foo%2Fa", "/a"),                # the cut is inside an encoded "/": the decoded result
        ("/foo", "", "/x/../foo/a%2Fb", "/a%2Fb"),     # dot segments removed from the raw path as well
        ("/foo", "", "/x/%2e%2e/foo/a%2Fb", "/a%2Fb"),
        ("", "", "/x//y/./a%2Fb", "/x/y/a%2Fb"),
        ("/foo", "", "/a%2F..%2Ffoo/b", "/b"),         # %2F-hidden dots: routed as /foo/b, sent as decoded
    ],
)
def test_upstream_raw_path(strip: str, prepend: str, raw: str, sent: str) -> None:
    from urllib.parse import unquote

    from router.proxy.paths import upstream_path, upstream_raw_path

    t = SimpleNamespace(strip=strip, prepend=prepend)
    s = raw_scope(raw)
    path = normalise_path(s["path"])
    got = upstream_raw_path(t, path, s)
    assert got == sent
    assert unquote(got) == upstream_path(t, path)  # always the path the routing decision was made on


def test_upstream_raw_path_without_raw_path_encodes_the_decoded_one() -> None:
    from router.proxy.paths import upstream_raw_path

    t = SimpleNamespace(strip="/foo", prepend="")
    assert upstream_raw_path(t, "/foo/a%b c", {"path": "/foo/a%b c", "headers": []}) == "/a%25b%20c"


def test_incoming_forwarded_and_prefix_are_replaced_once() -> None:
    s = scope(("host", "h"), ("forwarded", "for=1.1.1.1; proto=https"), ("x-forwarded-prefix", "/client"))
    d = as_dict(ForwardingHeaders().request_headers(s, "h", target(strip="/api"))[0])  # no duplicates
    assert d["forwarded"] == "for=1.1.1.1; proto=https; httpproto=http/1.1"
    assert d["x-forwarded-prefix"] == "/api"
    d = as_dict(ForwardingHeaders().request_headers(s, "h", target())[0])
    assert d["x-forwarded-prefix"] == "/client"  # no strip=: the client's is passed on


def test_via_is_appended_and_a_fifth_visit_is_a_routing_loop() -> None:
    from router.proxy.headers import MAX_VISITS, RoutingLoop

    fwd = ForwardingHeaders(via_id="r-1")
    assert as_dict(fwd.request_headers(scope(("host", "h")), "h", target())[0])["via"] == "1.1 r-1"
    two = scope(("host", "h"), ("via", "1.0 edge"), ("via", "1.1 r-1"))
    assert as_dict(fwd.request_headers(two, "h", target())[0])["via"] == "1.0 edge, 1.1 r-1, 1.1 r-1"
    seen = ", ".join(["1.1 r-1"] * (MAX_VISITS - 1))
    with pytest.raises(RoutingLoop, match=f"{MAX_VISITS} times"):
        fwd.request_headers(scope(("host", "h"), ("via", seen)), "h", target())
    # another router's entries do not count; without an id the client's Via is passed on unchanged
    assert fwd.request_headers(scope(("host", "h"), ("via", seen.replace("r-1", "r-2"))), "h", target())
    assert as_dict(ForwardingHeaders().request_headers(two, "h", target())[0])["via"] == "1.0 edge, 1.1 r-1"
