"""The traffic-policy route options (issue 19), parsed once per table build (pure).

Each policy is a route option in fabio's ``key=value`` style, so it works the same in a ``urlprefix-`` tag,
in ``route add ... opts "..."`` and in the static/file sources. Option values hold no spaces (options are
split on whitespace everywhere), so header values and match patterns are percent-decoded: a space is
written ``%20``, a ``|`` ``%7C``, an ``&`` ``%26`` and a ``%`` ``%25``.

=====================  ==========================================================================
option                 value
=====================  ==========================================================================
``compress``           ``on``, ``off`` or encodings in our order of preference: ``zstd,br,gzip``
``reqhdr.set``         ``Name:Value[|Name:Value...]``: replace the header sent upstream
``reqhdr.add``         the same, appended (a second value)
``reqhdr.del``         ``Name[,Name...]``: removed before it goes upstream
``resphdr.set/add/del``  the same for the response sent to the client
``match``              ``Cond[&Cond...]``, Cond = ``Name`` (present), ``Name=value`` (equal) or
                       ``Name~regex`` (search): the route serves only requests that match
``ratelimit``          ``<n>/s|m|h[,burst=<n>][,per=client]``: token bucket, 429 above it
``maxbody``            a size (``10MB``, ``512KiB``, bytes): a longer request body is answered 413
``sticky``             ``cookie[,name=..][,maxage=<dur>][,secure][,httponly=false][,samesite=..]`` or
                       ``hash[,header=<Name>]`` (consistent hashing on the client address or a header)
=====================  ==========================================================================

A bad value raises :class:`PolicyError` whose message names the option; the table reports it with the
command's source and line and leaves that command out, like every other bad option value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PolicyError", "TargetPolicy", "HeaderEdit", "header_edit", "Match", "RateSpec", "StickySpec", "POLICY_OPTS",
           "target_policy"]

ENCODINGS = ("zstd", "br", "gzip")
HEADER_OPTS = ("reqhdr.set", "reqhdr.add", "reqhdr.del", "resphdr.set", "resphdr.add", "resphdr.del")
POLICY_OPTS = frozenset(("compress", "match", "ratelimit", "sticky", "maxbody", *HEADER_OPTS))

# Forwarding headers are the router's (router/proxy/headers.py): a route cannot set or remove them, nor
# Host (that is `host=`), nor hop-by-hop headers, which never pass a proxy.
_REQ_PROTECTED = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-port",
                            "x-forwarded-proto", "x-forwarded-prefix", "x-real-ip", "host", "via"})
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade"})
# Response headers the framing depends on: rewriting them would corrupt the body the client reads.
_RESP_PROTECTED = frozenset({"content-length", "content-encoding"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name


class PolicyError(ValueError):
    """A policy option's value is malformed; the message names the option."""


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Header changes in the order they are applied: remove, then set (replace), then add.

    ``drop``/``drop_b`` (every name removed or set) and ``extra_b`` (what is appended, as bytes) are
    computed here, at table-build time, so a request pays only a list filter and an append.
    """

    remove: frozenset[str]  # lower-case names
    set: tuple[tuple[str, str], ...]  # (lower-case name, value)
    add: tuple[tuple[str, str], ...]
    drop: frozenset[str]
    drop_b: frozenset[bytes]
    extra: tuple[tuple[str, str], ...]
    extra_b: tuple[tuple[bytes, bytes], ...]


def header_edit(remove: frozenset[str] = frozenset(), set_: tuple[tuple[str, str], ...] = (),
                add: tuple[tuple[str, str], ...] = ()) -> HeaderEdit:
    drop = remove | {n for n, _ in set_}
    extra = (*set_, *add)
    return HeaderEdit(remove, set_, add, frozenset(drop), frozenset(n.encode("latin-1") for n in drop), extra,
                      tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in extra))


@dataclass(frozen=True, slots=True)
class Cond:
    name: str  # lower case
    kind: str  # "present" | "equal" | "regex"
    value: str = ""
    rx: re.Pattern[str] | None = None

    def test(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.kind == "present":
            return True
        if self.kind == "equal":
            return value == self.value
        assert self.rx is not None
        return self.rx.search(value) is not None


_KIND_RANK = {"equal": 3, "regex": 2, "present": 1}


@dataclass(frozen=True, slots=True)
class Match:
    """The conditions of a ``match=`` option; all must hold. ``text`` is the option value as written."""

    text: str
    conds: tuple[Cond, ...]

    @property
    def rank(self) -> tuple[int, int, str]:
        """Sort key, most specific first: more conditions, then stronger kinds (equal > regex > present),
        then the option text, so the order never depends on the order instances registered."""
        return -len(self.conds), -sum(_KIND_RANK[c.kind] for c in self.conds), self.text

    def test(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for c in self.conds:
            if not c.test(_header(headers, c.name)):
                return False
        return True


def _header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """All values of one request header joined by ", " (RFC 9110 5.3), or None when it is absent."""
    want = name.encode("latin-1")
    vals = [v.decode("latin-1") for n, v in headers if n == want]
    return ", ".join(vals) if vals else None


@dataclass(frozen=True, slots=True)
class RateSpec:
    text: str
    rate: float  # tokens per second
    burst: float
    per_client: bool


@dataclass(frozen=True, slots=True)
class StickySpec:
    text: str
    mode: str  # "cookie" | "hash"
    cookie: str = "router_sticky"
    max_age: int = 0  # seconds; 0 = a session cookie
    secure: bool | None = None  # None: Secure when the request came over TLS
    httponly: bool = True
    samesite: str = "Lax"  # "" = attribute left out
    header: str = ""  # hash mode: hash this request header (lower case); "" = the client address


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The policy options of one target; None fields were not given."""

    compress: tuple[str, ...] | None = None  # () = off
    req: HeaderEdit | None = None
    resp: HeaderEdit | None = None
    match: Match | None = None
    ratelimit: RateSpec | None = None
    sticky: StickySpec | None = None
    maxbody: int | None = None  # bytes; 0 = no limit on this route (whatever proxy.maxbodybytes says)


# ------------------------------------------------------------------------------------------ parsers


def parse_compress(text: str) -> tuple[str, ...]:
    low = text.lower()
    if low in ("on", "true"):
        return ENCODINGS
    if low in ("off", "false"):
        return ()
    encs = tuple(e.strip() for e in low.split(","))
    bad = [e for e in encs if e not in ENCODINGS]
    if not text or bad:
        raise PolicyError(f"compress={text!r}: expected on, off or a list of {', '.join(ENCODINGS)}")
    if len(set(encs)) != len(encs):
        raise PolicyError(f"compress={text!r}: an encoding is listed twice")
    return encs


def _name(opt: str, raw: str, protected: frozenset[str]) -> str:
    name = raw.strip()
    if not _TOKEN.match(name):
        raise PolicyError(f"{opt}: {raw!r} is not a header name")
    low = name.lower()
    if low in _HOP:
        raise PolicyError(f"{opt}: {name} is a hop-by-hop header; it never passes a proxy")
    if low in protected:
        raise PolicyError(f"{opt}: {name} is set by the router and cannot be rewritten")
    return low


def _value(opt: str, raw: str) -> str:
    value = unquote(raw)
    if any(c in value for c in "\r\n\0"):
        raise PolicyError(f"{opt}: a header value may not hold CR, LF or NUL")
    return value.strip(" \t")


def parse_header_pairs(opt: str, text: str, protected: frozenset[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in text.split("|"):
        name, colon, value = item.partition(":")
        if not colon:
            raise PolicyError(f"{opt}={text!r}: expected Name:Value[|Name:Value...]")
        out.append((_name(opt, name, protected), _value(opt, value)))
    return tuple(out)


def parse_header_names(opt: str, text: str, protected: frozenset[str]) -> frozenset[str]:
    if not text:
        raise PolicyError(f"{opt}: expected Name[,Name...]")
    return frozenset(_name(opt, n, protected) for n in text.split(","))


def _header_edit(opts: Mapping[str, str], side: str, protected: frozenset[str]) -> HeaderEdit | None:
    s, a, d = f"{side}.set", f"{side}.add", f"{side}.del"
    if s not in opts and a not in opts and d not in opts:
        return None
    return header_edit(
        parse_header_names(d, opts[d], protected) if d in opts else frozenset(),
        parse_header_pairs(s, opts[s], protected) if s in opts else (),
        parse_header_pairs(a, opts[a], protected) if a in opts else (),
    )


def parse_match(text: str) -> Match:
    if not text:
        raise PolicyError("match: expected Name, Name=value or Name~regex (joined by &)")
    conds = []
    for item in text.split("&"):
        i = min((p for p in (item.find("="), item.find("~")) if p >= 0), default=-1)
        raw_name = item if i < 0 else item[:i]
        if not _TOKEN.match(raw_name):
            raise PolicyError(f"match={text!r}: {raw_name!r} is not a header name")
        name = raw_name.lower()
        if i < 0:
            conds.append(Cond(name, "present"))
        elif item[i] == "=":
            conds.append(Cond(name, "equal", _value("match", item[i + 1 :])))
        else:
            pattern = unquote(item[i + 1 :])
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise PolicyError(f"match={text!r}: bad regular expression {pattern!r}: {e}") from None
            conds.append(Cond(name, "regex", pattern, rx))
    return Match(text, tuple(conds))


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _number(opt: str, text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise PolicyError(f"{opt}: {what} {text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise PolicyError(f"{opt}: {what} {text!r} must be a positive number")
    return v


def parse_ratelimit(text: str) -> RateSpec:
    opt = f"ratelimit={text}"
    head, *rest = text.split(",")
    n, slash, unit = head.partition("/")
    if not slash or unit not in _UNITS:
        raise PolicyError(f"{opt}: expected <n>/s, <n>/m or <n>/h, then optional ,burst=<n> and ,per=client")
    count = _number(opt, n, "rate")
    burst, per_client = max(1.0, count), False
    for item in rest:
        k, eq, v = item.partition("=")
        if k == "burst" and eq:
            burst = _number(opt, v, "burst")
            if burst < 1:
                raise PolicyError(f"{opt}: burst must be at least 1")
        elif k == "per" and v in ("client", "route"):
            per_client = v == "client"
        else:
            raise PolicyError(f"{opt}: unknown part {item!r} (burst=<n> or per=client|route)")
    return RateSpec(text, count / _UNITS[unit], burst, per_client)


_SIZE = re.compile(r"^(\d+)(|b|kb|k|mb|m|gb|g|kib|mib|gib)$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``maxbody=``: bytes, or with a unit (kB, MB, GB powers of 1000; KiB, MiB, GiB of 1024); 0 = none."""
    m = _SIZE.match(text.strip().lower())
    if m is None:
        raise PolicyError(f"maxbody={text!r}: expected a size such as 1048576, 512KB, 10MB or 1GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None", "off": ""}
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _flag(opt: str, k: str, v: str, eq: str) -> bool:
    if not eq or v.lower() in ("true", "1", "on"):
        return True
    if v.lower() in ("false", "0", "off"):
        return False
    raise PolicyError(f"{opt}: {k}={v!r} is not true or false")


def parse_sticky(text: str, duration) -> StickySpec:  # type: ignore[no-untyped-def]
    """``duration`` parses Go durations (router.config), passed in to keep this module free of config."""
    opt = f"sticky={text}"
    mode, *rest = text.split(",")
    if mode not in ("cookie", "hash"):
        raise PolicyError(f"{opt}: expected sticky=cookie[,...] or sticky=hash[,header=<name>]")
    kw: dict[str, object] = {}
    for item in rest:
        k, eq, v = item.partition("=")
        if mode == "hash" and k == "header" and eq and _TOKEN.match(v):
            kw["header"] = v.lower()
        elif mode == "cookie" and k == "name" and eq and _COOKIE_NAME.match(v):
            kw["cookie"] = v
        elif mode == "cookie" and k == "maxage" and eq:
            try:
                secs = duration(v)
            except ValueError:
                raise PolicyError(f"{opt}: maxage={v!r} is not a duration like 1h or 30m") from None
            if not math.isfinite(secs) or secs > 400 * 86400:
                raise PolicyError(f"{opt}: maxage={v!r} is over 400 days, the most browsers keep a cookie")
            kw["max_age"] = int(secs)
        elif mode == "cookie" and k in ("secure", "httponly"):
            kw[k] = _flag(opt, k, v, eq)
        elif mode == "cookie" and k == "samesite" and v.lower() in _SAMESITE:
            kw["samesite"] = _SAMESITE[v.lower()]
        else:
            raise PolicyError(f"{opt}: unknown or malformed part {item!r}")
    if kw.get("samesite") == "None" and not kw.get("secure"):
        raise PolicyError(f"{opt}: samesite=none needs secure (browsers drop the cookie otherwise)")
    return StickySpec(text, mode, **kw)  # type: ignore[arg-type]


def target_policy(opts: Mapping[str, str], duration) -> TargetPolicy | None:  # type: ignore[no-untyped-def]
    """The policy of one target's options, or None when it has none (the hot path then skips it all)."""
    if POLICY_OPTS.isdisjoint(opts):
        return None
    return TargetPolicy(
        compress=parse_compress(opts["compress"]) if "compress" in opts else None,
        req=_header_edit(opts, "reqhdr", _REQ_PROTECTED),
        resp=_header_edit(opts, "resphdr", _RESP_PROTECTED),
        match=parse_match(opts["match"]) if "match" in opts else None,
        ratelimit=parse_ratelimit(opts["ratelimit"]) if "ratelimit" in opts else None,
        sticky=parse_sticky(opts["sticky"], duration) if "sticky" in opts else None,
        maxbody=parse_size(opts["maxbody"]) if "maxbody" in opts else None,
    )
