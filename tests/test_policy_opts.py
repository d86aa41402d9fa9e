"""The traffic-policy option parsers (router/table/policyopts.py): table-driven cases and properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config.values import parse_duration
from router.table.policyopts import _REQ_PROTECTED as REQ
from router.table.policyopts import _RESP_PROTECTED as RESP
from router.table.policyopts import (
    ENCODINGS,
    PolicyError,
    parse_compress,
    parse_header_names,
    parse_header_pairs,
    parse_match,
    parse_ratelimit,
    parse_size,
    parse_sticky,
    target_policy,
)


@pytest.mark.parametrize(("text", "want"), [
    ("on", ENCODINGS), ("true", ENCODINGS), ("off", ()), ("false", ()), ("gzip", ("gzip",)),
    ("br,gzip", ("br", "gzip")), ("ZSTD", ("zstd",)),
])
def test_compress_values(text: str, want: tuple[str, ...]) -> None:
    assert parse_compress(text) == want


@pytest.mark.parametrize("text", ["", "yes", "deflate", "gzip,gzip", "gzip,", "br;q=1"])
def test_compress_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match="compress="):
        parse_compress(text)


@pytest.mark.parametrize(("text", "want"), [
    ("X-A:1", (("x-a", "1"),)),
    ("Content-Security-Policy:default-src%20'self'", (("content-security-policy", "default-src 'self'"),)),
    ("X-A:1|X-B:two%7Cthree", (("x-a", "1"), ("x-b", "two|three"))),
    ("X-Empty:", (("x-empty", ""),)),
    ("X-Colon:a:b", (("x-colon", "a:b"),)),
])
def test_header_pairs(text: str, want: tuple) -> None:
    assert parse_header_pairs("reqhdr.set", text, REQ) == want


@pytest.mark.parametrize(("text", "why"), [
    ("X-A", "Name:Value"), ("Bad Name:1", "not a header name"), ("X-Forwarded-For:1.2.3.4", "set by the router"),
    ("Host:evil", "set by the router"), ("Connection:close", "hop-by-hop"), ("X-A:a%0d%0aX-B:1", "CR, LF"),
    ("X-Real-Ip:1", "set by the router"), (":v", "not a header name"),
])
def test_header_pairs_reject(text: str, why: str) -> None:
    with pytest.raises(PolicyError, match="reqhdr.set") as e:
        parse_header_pairs("reqhdr.set", text, REQ)
    assert why in str(e.value)


def test_response_side_protects_framing_not_server() -> None:
    assert parse_header_names("resphdr.del", "Server,X-Powered-By", RESP) == {"server", "x-powered-by"}
    with pytest.raises(PolicyError, match="resphdr.set: Content-Length"):
        parse_header_pairs("resphdr.set", "Content-Length:1", RESP)
    with pytest.raises(PolicyError, match="resphdr.del"):
        parse_header_names("resphdr.del", "", RESP)


@pytest.mark.parametrize(("text", "kinds"), [
    ("X-Version", [("x-version", "present", "")]),
    ("X-Version=2", [("x-version", "equal", "2")]),
    ("Accept~vnd\\.v2\\+json", [("accept", "regex", "vnd\\.v2\\+json")]),
    ("X-A=1&X-B~^b&X-C", [("x-a", "equal", "1"), ("x-b", "regex", "^b"), ("x-c", "present", "")]),
    ("X-A=a%20b", [("x-a", "equal", "a b")]),
    ("X-A=x=y", [("x-a", "equal", "x=y")]),
])
def test_match(text: str, kinds: list) -> None:
    m = parse_match(text)
    assert [(c.name, c.kind, c.value) for c in m.conds] == kinds
    assert m.text == text


@pytest.mark.parametrize("text", ["", "=1", "Bad Name=1", "X-A~(", "X-A&", "~x"])
def test_match_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match="match"):
        parse_match(text)


def test_match_rank_more_specific_first() -> None:
    texts = ["X-V", "X-V=2", "X-V~2", "X-V=2&Accept~json", "A=1"]
    ordered = sorted((parse_match(t) for t in texts), key=lambda m: m.rank)
    assert [m.text for m in ordered] == ["X-V=2&Accept~json", "A=1", "X-V=2", "X-V~2", "X-V"]


def test_match_test_on_request_headers() -> None:
    m = parse_match("X-Version=2&Accept~json")
    assert m.test([(b"x-version", b"2"), (b"accept", b"application/json")])
    assert not m.test([(b"x-version", b"2")])
    assert not m.test([(b"x-version", b"3"), (b"accept", b"application/json")])
    # repeated headers are judged joined, as one field (RFC 9110 5.3)
    assert parse_match("Accept~json").test([(b"accept", b"text/html"), (b"accept", b"application/json")])


@pytest.mark.parametrize(("text", "rate", "burst", "per_client"), [
    ("100/s", 100.0, 100.0, False), ("60/m", 1.0, 60.0, False), ("3600/h,burst=10", 1.0, 10.0, False),
    ("0.5/s", 0.5, 1.0, False), ("10/s,per=client", 10.0, 10.0, True), ("10/s,burst=5,per=route", 10.0, 5.0, False),
])
def test_ratelimit(text: str, rate: float, burst: float, per_client: bool) -> None:
    r = parse_ratelimit(text)
    assert (r.rate, r.burst, r.per_client) == (rate, burst, per_client)


@pytest.mark.parametrize("text", ["100", "100/d", "x/s", "-1/s", "0/s", "inf/s", "10/s,burst=0.5", "10/s,per=ip",
                                  "10/s,burst", "10/s,foo=1", "nan/s"])
def test_ratelimit_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match="ratelimit="):
        parse_ratelimit(text)


def test_sticky() -> None:
    s = parse_sticky("cookie", parse_duration)
    assert (s.mode, s.cookie, s.max_age, s.httponly, s.secure, s.samesite) == ("cookie", "router_sticky", 0, True,
                                                                                None, "Lax")
    assert parse_sticky("cookie,secure=false", parse_duration).secure is False
    s = parse_sticky("cookie,name=SRV,maxage=1h,secure,httponly=false,samesite=none", parse_duration)
    assert (s.cookie, s.max_age, s.httponly, s.secure, s.samesite) == ("SRV", 3600, False, True, "None")
    assert parse_sticky("hash", parse_duration).header == ""
    assert parse_sticky("hash,header=X-User", parse_duration).header == "x-user"


@pytest.mark.parametrize("text", ["", "ip", "cookie,name=a;b", "cookie,maxage=forever", "cookie,samesite=none",
                                  "cookie,secure=maybe", "hash,header=", "hash,name=x", "cookie,header=x"])
def test_sticky_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match="sticky="):
        parse_sticky(text, parse_duration)


def test_target_policy_none_without_policy_options() -> None:
    assert target_policy({"strip": "/x", "host": "dst"}, parse_duration) is None
    p = target_policy({"compress": "off", "resphdr.del": "Server"}, parse_duration)
    assert p is not None and p.compress == () and p.resp is not None and p.resp.remove == {"server"}


_opt_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@given(_opt_text)
def test_parsers_raise_only_policy_errors(text: str) -> None:
    """Any printable value is either accepted or refused with a PolicyError naming the option."""
    for name, fn in (("compress", parse_compress), ("match", parse_match), ("ratelimit", parse_ratelimit),
                     ("sticky", lambda t: parse_sticky(t, parse_duration)),
                     ("reqhdr.set", lambda t: parse_header_pairs("reqhdr.set", t, REQ)),
                     ("resphdr.del", lambda t: parse_header_names("resphdr.del", t, RESP))):
        try:
            fn(text)
        except PolicyError as e:
            assert name in str(e)


_NAME_CHARS = string.ascii_letters + string.digits + "-"  # from_regex drew these ~100x slower


@given(st.lists(st.tuples(st.text(_NAME_CHARS, min_size=1, max_size=10).map("X-".__add__),
                          st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)),
                min_size=1, max_size=4))
def test_header_pairs_round_trip(pairs: list[tuple[str, str]]) -> None:
    """Values written percent-encoded come back exactly (leading/trailing blanks are trimmed as in HTTP)."""
    from urllib.parse import quote
    text = "|".join(f"{n}:{quote(v, safe='')}" for n, v in pairs)
    got = parse_header_pairs("reqhdr.add", text, REQ)
    assert got == tuple((n.lower(), v.strip(" \t")) for n, v in pairs)


@pytest.mark.parametrize(("text", "want"), [
    ("0", 0), ("1048576", 1048576), ("512KB", 512_000), ("10MB", 10_000_000), ("1GiB", 1 << 30),
    ("64kib", 65536), ("2m", 2_000_000), ("7b", 7),
])
def test_maxbody(text: str, want: int) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "-1", "1.5MB", "10 MB", "ten", "1TB", "0x10"])
def test_maxbody_rejects(text: str) -> None:
    with pytest.raises(PolicyError, match="maxbody="):
        parse_size(text)
