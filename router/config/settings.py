"""fabio-compatible configuration: the same property names, defaults and precedence.

Sources, strongest first: command-line flags (`-key value` / `-key=value`), environment variables
(`FABIO_<KEY>` then `<KEY>`, upper-cased, dots as underscores), the properties file given with `-cfg`,
then the built-in defaults. A value that does not parse, or is out of its key's range, stops startup with
a message naming the key, the value and what the key accepts; a key nobody knows is warned about and
ignored, so a fabio.properties from a newer fabio still starts us. Where fabio is lenient we are too:
`log.level` in any case, an unknown `log.routes.format` warned about and replaced by `delta`. Listener
options we do not act on, and listeners after the first, are warned about; a listener that would need
TLS, TCP or gRPC (`proto=https`, `cs=`) stops startup rather than serving plain HTTP on it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router import __version__
from router.config import listeners as _listeners


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and the accepted values."""


# ----------------------------------------------------------------------------- value parsers

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go duration syntax ("1s", "500ms", "1m30s", "0") -> seconds."""
    s = text.strip()
    if s in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError("a duration such as 500ms, 10s, 1m30s")
    return total


def parse_bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("true", "1", "t", "yes", "on"):
        return True
    if v in ("false", "0", "f", "no", "off", ""):
        return False
    raise ValueError("true or false")


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_int(text: str) -> int:
    """A decimal whole number, as Go's strconv.Atoi reads it (no `1_000`, no `1.0`)."""
    if not _INT.fullmatch(text.strip()):
        raise ValueError("a whole number")
    return int(text.strip())


def parse_float(text: str) -> float:
    """A finite decimal number (`nan`, `inf` and `1e999` are refused)."""
    v = text.strip()
    if not _FLOAT.fullmatch(v) or not math.isfinite(float(v)):
        raise ValueError("a number")
    return float(v)


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def choice(*allowed: str, any_case: bool = False) -> Callable[[str], str]:
    """One of `allowed`; with `any_case` the value is upper-cased first (fabio's log.level)."""

    def parse(text: str) -> str:
        v = text.strip().upper() if any_case else text.strip()
        if v not in allowed:
            raise ValueError("one of " + ", ".join(allowed) + (" (in any case)" if any_case else ""))
        return v

    return parse


def int_range(lo: int, hi: int | None = None, zero: str = "") -> Callable[[str], int]:
    """A whole number from `lo` to `hi` (no upper bound if None); `zero`: what 0 means, for the message."""
    if hi is not None:
        accepted = f"a whole number from {lo} to {hi}"
    else:
        accepted = f"a whole number, {lo} or more"
    if zero:
        accepted += f" (0 = {zero})"

    def parse(text: str) -> int:
        try:
            v = parse_int(text)
        except ValueError:
            raise ValueError(accepted) from None
        if v < lo or (hi is not None and v > hi):
            raise ValueError(accepted)
        return v

    return parse


def positive_number(text: str) -> float:
    """A finite number greater than 0."""
    try:
        v = parse_float(text)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise ValueError("a number greater than 0, such as 20 or 0.5")
    return v


def number_range(lo: float, hi: float) -> Callable[[str], float]:
    """A finite number from `lo` to `hi`."""

    def parse(text: str) -> float:
        try:
            v = parse_float(text)
        except ValueError:
            v = math.nan
        if not lo <= v <= hi:
            raise ValueError(f"a number from {lo:g} to {hi:g}")
        return v

    return parse


GO_MAX_DURATION = (2**63 - 1) / 1e9  # seconds: Go's time.Duration is an int64 of nanoseconds (~292 years)


def _fmt_seconds(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


def duration(lo: float = 0.0, hi: float = GO_MAX_DURATION, zero: str = "", hi_why: str = "") -> Callable[[str], float]:
    """A Go duration from `lo` to `hi` seconds. `zero`: what 0 means (0 is then accepted even if lo > 0).

    Go's syntax has no nan/inf, and negative durations are refused everywhere.
    """
    bounds = [f"at least {_fmt_seconds(lo)}"] if lo > 0 else [] if zero else ["0 or more"]
    if hi < GO_MAX_DURATION:
        bounds.append(f"at most {_fmt_seconds(hi)}{hi_why}")
    if zero:
        accepted = f"0 ({zero}) or a positive duration" + (" of " + " and ".join(bounds) + "," if bounds else "")
    else:
        accepted = "a duration of " + " and ".join(bounds) + ","
    accepted += " such as 500ms, 10s or 1m30s"

    def parse(text: str) -> float:
        try:
            v = parse_duration(text)
        except ValueError:
            raise ValueError(accepted) from None
        if v == 0 and zero:
            return 0.0
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(accepted)
        return v

    return parse


def list_of(*allowed: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = parse_list(text)
        bad = [i for i in items if i not in allowed]
        if bad or not items:
            raise ValueError("a comma list of " + ", ".join(allowed))
        return items

    return parse


# --- listeners: fabio's `addr[;opt=value...][,addr2;...]` (config/load.go parseListen)

FABIO_LISTENER_PROTOS = ("http", "https", "tcp", "tcp+sni", "tcp-dynamic", "https+tcp+sni", "grpc", "grpcs",
                         "prometheus")
SUPPORTED_LISTENER_OPTIONS = {"proxy.addr": ("proto", "it"),
                              "ui.addr": ("proto", "cs", "strictmatch", "tlsmin", "tlsmax", "tlsciphers")}
_LISTENER_OPTION_NOTES = {
    "rt": "no read timeout is applied",
    "wt": "no write timeout is applied",
    "it": "the UI keeps uvicorn's idle timeout",
    "pxyproto": "a PROXY protocol header is not read: such connections get 400",
    "pxytimeout": "the PROXY protocol is not supported",
    "strictmatch": "there are no TLS listeners",
    "tlsmin": "there are no TLS listeners",
    "tlsmax": "there are no TLS listeners",
    "tlsciphers": "there are no TLS listeners",
    "refresh": "tcp-dynamic listeners are not supported",
}


def listener_options(text: str) -> dict[str, str]:
    """The `;name=value` options of the first listener in a fabio listen address (`:9999;it=30s`)."""
    listeners = _listeners.split_kv_list(text)
    return dict(listeners[0][1]) if listeners else {}


def client_idle_timeout(text: str) -> float:
    """fabio's `it=` listener option: how long an idle client keep-alive connection is kept.

    fabio's default (no `it=`, no read timeout) never closes idle clients; ours keeps uvicorn's 75 s so
    idle connections cannot pile up without bound, and `it=0` means "never" (one day) as in fabio.
    """
    it = listener_options(text).get("it")
    if it is None:
        return 75.0
    seconds = _IDLE_TIMEOUT(it)
    return seconds if seconds > 0 else 86400.0


_IDLE_TIMEOUT = duration(zero="never close idle connections")


def listen_addr(key: str) -> Callable[[str], tuple[str, int]]:
    """Parser of proxy.addr / ui.addr: the first listener -> (host, port). It must be plain HTTP."""

    def parse(text: str) -> tuple[str, int]:
        if key == "proxy.addr":
            return _proxy_addr(text)
        listeners = _listeners.split_kv_list(text)
        if not listeners:
            raise ValueError("host:port, e.g. :9999 or 127.0.0.1:9999")
        if key == "ui.addr" and len(listeners) > 1:
            raise ValueError("exactly one listener (as in fabio)")
        addr, opts = listeners[0]
        o = dict(opts)
        proto = o.get("proto", "")
        if proto and proto not in FABIO_LISTENER_PROTOS:
            raise ValueError(f"a listener with a known proto= ({', '.join(FABIO_LISTENER_PROTOS)}), got {proto!r}")
        if proto not in ("", "http", "https"):  # the UI speaks HTTP, over TLS with a cs= (as fabio's)
            raise ValueError(f"an HTTP or HTTPS listener (proto=http, or cs=<source> for HTTPS), not proto={proto}")
        if "it" in o and key == "proxy.addr":
            try:
                _IDLE_TIMEOUT(o["it"])
            except ValueError as e:
                raise ValueError(f"it= must be {e}") from None
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError("host:port, e.g. :9999 or 127.0.0.1:9999")
        host = host.strip("[]") or "0.0.0.0"
        try:
            p = parse_int(port)
        except ValueError:
            p = -1
        if not 0 <= p <= 65535:
            raise ValueError("a port from 0 to 65535")
        return host, p

    return parse


def proxy_listeners(text: str, sources: Mapping[str, _listeners.CertSourceSpec] | None = None, *,
                    read_timeout: float = 0.0, write_timeout: float = 0.0) -> tuple[_listeners.Listener, ...]:
    """`proxy.addr` as fabio reads it (router/config/listeners.py); `sources` None checks the syntax only."""
    return _listeners.parse_listeners(text, sources, _LISTENER_DURATION, parse_bool,
                                      read_timeout=read_timeout, write_timeout=write_timeout)


_LISTENER_DURATION = duration()


def _proxy_addr(text: str) -> tuple[str, int]:
    """Typed value of proxy.addr: (host, port) of the first plain HTTP listener, else of the first one.

    Every listener is checked here; the full list, with the certificate sources resolved, is
    Config.listeners (load()).
    """
    found = proxy_listeners(text)
    first = next((lst for lst in found if lst.proto == "http"), found[0])
    return first.host, first.port


def listener_warnings(key: str, text: str) -> list[str]:
    """What of a (valid) listen address is not acted on: unsupported options, listeners after the first."""
    if key == "proxy.addr":
        return [f"{key}: listener {shown}: option {n}={v} is unknown (to fabio too); ignored"
                for shown, n, v in _listeners.unknown_options(text)]
    out = []
    listeners = _listeners.split_kv_list(text)
    supported = SUPPORTED_LISTENER_OPTIONS[key]
    for name, value in listeners[0][1] if listeners else ():
        if name not in supported:
            note = _LISTENER_OPTION_NOTES.get(name, "fabio does not know it either")
            out.append(f"{key}: listener option {name}={value} is not supported here; ignored ({note})")
    for addr, opts in listeners[1:]:
        shown = ";".join([addr, *(f"{n}={v}" for n, v in opts)])
        out.append(f"{key}: only the first listener is served; the listener {shown} is ignored")
    return out


def parse_consul_addr(text: str) -> str:
    """`host:port`, `http://host:port` or `https://host:port`; the scheme in any case (as fabio reads it)."""
    v = text.strip()
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", v)
    if m:
        scheme = m.group(1).lower()
        if scheme not in ("http", "https"):
            raise ValueError("host:port, http://host:port or https://host:port")
        v = scheme + v[len(m.group(1)) :]
    if v in ("http://", "https://"):
        raise ValueError("host:port, http://host:port or https://host:port")
    return v  # empty: refused in load() when the Consul backend is used


def parse_str(text: str) -> str:
    return text.strip()


def parse_regexp(text: str) -> str:
    """A regular expression, checked now (kept as text; its users compile it)."""
    try:
        re.compile(text.strip())
    except re.error:
        raise ValueError("a regular expression (Python's re syntax, which agrees with Go's for content types)") from None
    return text.strip()


# fabio's UI is built with Materialize, and `ui.color` names one of its colour classes for the nav bar:
# a base colour (its 500 shade below, Material Design's published values), optionally with a modifier
# (`light-green darken-2`).  Our UI has no Materialize, so a modifier is approximated by mixing the base
# with white (lighten-N, N=1..5) or black (darken-N, N=1..4); accent-N keeps the base.  A CSS hex colour
# (`#2e7d32`) is accepted too (ours).
_MATERIAL = {
    "red": "f44336", "pink": "e91e63", "purple": "9c27b0", "deep-purple": "673ab7", "indigo": "3f51b5",
    "blue": "2196f3", "light-blue": "03a9f4", "cyan": "00bcd4", "teal": "009688", "green": "4caf50",
    "light-green": "8bc34a", "lime": "cddc39", "yellow": "ffeb3b", "amber": "ffc107", "orange": "ff9800",
    "deep-orange": "ff5722", "brown": "795548", "grey": "9e9e9e", "blue-grey": "607d8b", "black": "000000",
    "white": "ffffff",
}
_MODIFIER = re.compile(r"(lighten|darken|accent)-([1-5])")
_HEX = re.compile(r"#(?:[0-9a-f]{3}|[0-9a-f]{6})")


def ui_color_rgb(text: str) -> tuple[int, int, int]:
    """The colour `ui.color` names, as (r, g, b); ValueError for anything else."""
    v = " ".join(text.lower().split())
    if _HEX.fullmatch(v):
        h = v[1:] if len(v) == 7 else "".join(c * 2 for c in v[1:])
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    base, _, mod = v.partition(" ")
    if base not in _MATERIAL:
        raise ValueError("a Materialize colour (light-green, blue, red darken-2, ...) or a CSS hex colour (#2e7d32)")
    rgb = tuple(int(_MATERIAL[base][i:i + 2], 16) for i in (0, 2, 4))
    if not mod:
        return rgb  # type: ignore[return-value]
    m = _MODIFIER.fullmatch(mod)
    if m is None or (m[1] == "darken" and m[2] == "5"):
        raise ValueError("a modifier lighten-1..5, darken-1..4 or accent-1..4 after the colour name")
    share = {"lighten": 0.17, "darken": 0.12, "accent": 0.0}[m[1]] * int(m[2])
    target = 255 if m[1] == "lighten" else 0
    return tuple(round(c + (target - c) * share) for c in rgb)  # type: ignore[return-value]


def parse_ui_color(text: str) -> str:
    """`ui.color`, checked here so that a typo stops startup instead of giving a colourless bar."""
    v = " ".join(text.lower().split())
    ui_color_rgb(v)
    return v


# --- secrets inside values

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#]*)@")
_BARE_USERINFO = re.compile(r"^([^\s/?#@:]+):([^\s/?#]*)@(?=[^\s@/]+(?:/|$))")


def redact_userinfo(value: str) -> str:
    """Passwords in URL-like values: `https://user:pw@host` -> `https://user:<redacted>@host`.

    A user name alone (`https://token@host`) may itself be the secret, so it is redacted too.
    """

    def url(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return m.group(1) + (f"{user}:<redacted>" if sep else "<redacted>") + "@"

    value = _URL_USERINFO.sub(url, value)
    return _BARE_USERINFO.sub(lambda m: f"{m.group(1)}:<redacted>@", value)


# ----------------------------------------------------------------------------- the keys


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    todo: str = ""  # non-empty: accepted but not acting yet; said at startup when set and in the example file
    lenient: bool = False  # an invalid value is warned about and the default used (fabio's log.routes.format)


KEYS: tuple[Key, ...] = (
    # proxy
    Key("proxy.addr", ":9999", listen_addr("proxy.addr"),
        "listeners, fabio's syntax: addr;proto=http|https|tcp|tcp+sni|...;cs=<cert source>;rt=;wt=;it=;"
        "strictmatch=;tlsmin=;tlsmax=;tlsciphers=;pxyproto=;pxytimeout=;refresh= [,addr2;...]; "
        "it=<duration>: idle client keep-alive timeout (default 75s)"),
    Key("proxy.cs", "", parse_str,
        "certificate sources: cs=<name>;type=file|path|http|consul;cert=<path or URL>[;key=][;clientca=]"
        "[;refresh=3s][;hdr=Name: value][;caupgcn=<issuer CN>: its clientca certificates count as CAs] [,cs=...]; "
        "vault and vault-pki are refused at startup"),
    Key("proxy.readtimeout", "0", duration(zero="no timeout"), "default of the listeners' rt= (read timeout)"),
    Key("proxy.writetimeout", "0", duration(zero="no timeout"), "default of the listeners' wt= (write timeout)"),
    Key("proxy.strategy", "p2c", choice("p2c", "rnd", "rr"),
        "how a target is picked: p2c (the less loaded of two random ones: latency estimate x requests in flight; "
        "ours, the default), rnd (random, fabio's default) or rr (round robin); weights hold for all three"),
    Key("proxy.matcher", "prefix", choice("prefix", "iprefix", "glob"), "how paths are matched"),
    Key("proxy.noroutestatus", "404", int_range(100, 999), "status when no route matches"),
    Key("proxy.dialtimeout", "1s", duration(zero="no timeout"),
        "timeout for connecting to an upstream, shared by a request's connects (fabio: 30s)"),
    Key("proxy.responseheadertimeout", "0", duration(zero="no timeout"),
        "timeout for the upstream's response headers"),
    Key("proxy.keepalivetimeout", "0", duration(hi=32767, zero="no keep-alive probes", hi_why=" (Linux's limit)"),
        "TCP keep-alive idle time for upstream connections (whole seconds, at least 1s)"),
    Key("proxy.idleconntimeout", "15s", duration(zero="no limit"), "how long an idle upstream connection is kept"),
    Key("proxy.maxconn", "10000", int_range(0), "idle upstream connections kept per host (0: 2, as Go's default)"),
    Key("proxy.shutdownwait", "0", duration(), "how long to keep serving after SIGTERM"),
    Key("proxy.deregistergraceperiod", "0", duration(), "wait after deregistering before shutdown"),
    Key("proxy.localip", "", parse_str, "this host's IP, used in Forwarded: by="),
    Key("proxy.header.clientip", "", parse_str, "request header set to the client's IP (empty = off)"),
    Key("proxy.header.tls", "", parse_str, "request header set on TLS requests, removed from plain ones"),
    Key("proxy.header.tls.value", "", parse_str, "value of proxy.header.tls"),
    Key("proxy.header.requestid", "", parse_str, "request header set to a new UUID per request (empty = off)"),
    Key("proxy.header.sts.maxage", "0", int_range(0, zero="no HSTS header"), "HSTS max-age (seconds) on TLS responses"),
    Key("proxy.header.sts.subdomains", "false", parse_bool, "add includeSubdomains to the HSTS header"),
    Key("proxy.header.sts.preload", "false", parse_bool, "add preload to the HSTS header"),
    Key("proxy.auth", "", parse_str, "auth schemes: name=a;type=basic;file=<htpasswd>;realm=r;refresh=30s[,...]"),
    Key("proxy.workers", "0", int_range(0, 256), "number of proxy worker processes, 0 = one per core (ours)"),
    Key("proxy.maxheaderbytes", "1048576", int_range(1024, 1 << 30),
        "largest request head (request line + headers) in bytes; larger is answered 431 (ours)"),
    Key("proxy.grpcmaxrxmsgsize", "4194304", int_range(0, (1 << 31) - 1),
        "largest gRPC message in bytes the router takes, from clients and from instances; larger ends the call with "
        "RESOURCE_EXHAUSTED (8), as fabio"),
    Key("proxy.grpcmaxtxmsgsize", "4194304", int_range(0, (1 << 31) - 1),
        "largest gRPC message in bytes the router sends to a client; larger ends the call with RESOURCE_EXHAUSTED "
        "(8), as fabio"),
    Key("proxy.retry.attempts", "3", int_range(1, 16),
        "tries per request (the first, retries and hedges), each on another instance of the route (ours)"),
    Key("proxy.retry.budget", "0.2", number_range(0, 10),
        "retries and hedges allowed per request of a route, over the last 10s (ours)"),
    Key("proxy.retry.budget.min", "10", number_range(0, 1e6),
        "retries and hedges per second a route may always make, on top of proxy.retry.budget (ours)"),
    Key("proxy.retry.pertrytimeout", "250ms", duration(zero="no per-try timeout, no hedged requests"),
        "an idempotent request without a body and without headers after this long (at least 4x the route's "
        "latency estimate) is also sent to another instance; the first answer wins (ours)"),
    Key("proxy.retry.buffer", "65536", int_range(0, 1 << 30, zero="off"),
        "bytes of an idempotent request's response held back until complete, so a reset before then is retried "
        "elsewhere (ours)"),
    Key("proxy.hedge.delay", "25ms", duration(zero="no connect hedging"),
        "a connect not complete after this long (at least 4x the average connect time) gets a second connect to "
        "another instance; the request goes on the first connection (ours)"),
    Key("proxy.lb.decay", "1s", duration(lo=0.001),
        "time constant of p2c's latency estimate; an instance without answers for this long is probed again (ours)"),
    Key("proxy.maxinflight", "0", int_range(0, zero="no limit"),
        "requests in flight to one instance, per proxy process; beyond it others are picked, then 503 with "
        "Retry-After (ours)"),
    Key("proxy.eject.failures", "3", int_range(0, 1000),
        "consecutive failures (connect, reset, per-try timeout, 5xx) after which an instance gets no traffic for a "
        "while (0 = never) (ours)"),
    Key("proxy.eject.duration", "1s", duration(lo=0.001),
        "how long a first ejection lasts; each ejection in a row lasts twice as long, up to proxy.eject.maxduration; "
        "to turn ejection off, set proxy.eject.failures=0 (ours)"),
    Key("proxy.eject.maxduration", "2s", duration(lo=0.001),
        "the longest ejection: an instance that is back gets traffic again within this (ours)"),
    Key("proxy.eject.maxshare", "0.5", number_range(0, 1),
        "share of a route's instances that may be ejected at once (at least one of two or more) (ours)"),
    Key("proxy.gzip.contenttype", "", parse_regexp,
        "regexp of response content types to compress when the client accepts it (empty = off); "
        "zstd and br as well as gzip (ours), and the route option compress= turns it on or off per route"),
    Key("proxy.compress.minsize", "1024", int_range(0),
        "responses with a Content-Length below this many bytes are not compressed (ours)"),
    Key("proxy.maxbodybytes", "0", int_range(0, zero="no limit"),
        "largest request body in bytes, answered 413 above it; the route option maxbody= overrides it (ours)"),
    # registry
    Key("registry.backend", "consul", choice("consul", "static", "file"), "where routes come from"),
    Key("registry.timeout", "10s", duration(), "how long to retry the registry at startup", todo='no effect: the router retries Consul forever with capped backoff and answers 503 until the first table'),
    Key("registry.retry", "500ms", duration(), "retry interval at startup", todo='no effect: see registry.timeout'),
    Key("registry.static.routes", "", parse_str, "route commands for registry.backend=static"),
    Key("registry.static.noroutehtml", "", parse_str,
        "HTML page answered when no route matches, for registry.backend=static"),
    Key("registry.file.path", "", parse_str, "route command file for registry.backend=file"),
    Key("registry.consul.addr", "localhost:8500", parse_consul_addr,
        "Consul agent address: host:port, http://host:port or https://host:port (scheme in any case)"),
    Key("registry.consul.token", "", parse_str, "Consul ACL token", secret=True),
    Key("registry.consul.tls.keyfile", "", parse_str, "client key for an https:// Consul"),
    Key("registry.consul.tls.certfile", "", parse_str, "client certificate for an https:// Consul"),
    Key("registry.consul.tls.cafile", "", parse_str, "CA file to verify an https:// Consul"),
    Key("registry.consul.tls.capath", "", parse_str, "directory of CA files to verify an https:// Consul"),
    Key("registry.consul.tls.insecureskipverify", "false", parse_bool, "do not verify Consul's certificate"),
    Key("registry.consul.kvpath", "/fabio/config", parse_str, "KV prefix of the manual overrides"),
    Key("registry.consul.noroutehtmlpath", "/fabio/noroute.html", parse_str, "KV key of the no-route page"),
    Key("registry.consul.tagprefix", "urlprefix-", parse_str, "prefix of the route tags"),
    Key(
        "registry.consul.service.status",
        "passing",
        list_of("passing", "warning", "critical", "unknown"),
        "check statuses that make an instance routable",
    ),
    Key("registry.consul.checksRequired", "one", choice("one", "all"), "one passing check or all of them"),
    Key("registry.consul.unrunhold", "45s", duration(zero="off"),
        "how long a routed instance keeps its route while a check has not run since its agent restarted (ours)"),
    Key("registry.consul.requireConsistent", "true", parse_bool, "consistent reads from Consul"),
    Key("registry.consul.allowStale", "false", parse_bool, "stale reads from Consul"),
    Key("registry.consul.pollInterval", "0", duration(zero="blocking queries"), "poll instead of blocking queries (0 = block)", todo='not implemented yet: blocking queries are always used'),
    Key("registry.consul.register.enabled", "true", parse_bool, "register the router itself in Consul"),
    Key("registry.consul.register.name", "fabio", parse_str, "service name of the self-registration"),
    Key("registry.consul.register.addr", "", parse_str, "address of the self-registration (default ui.addr)"),
    Key("registry.consul.register.tags", "", parse_list, "tags of the self-registration"),
    Key("registry.consul.register.checkInterval", "1s", duration(lo=0.001), "health check interval"),
    Key("registry.consul.register.checkTimeout", "3s", duration(zero="Consul's default"), "health check timeout"),
    Key("registry.consul.register.checkTLSSkipVerify", "false", parse_bool, "skip TLS verification in the check"),
    Key("registry.consul.register.checkDeregisterCriticalServiceAfter", "90m", parse_str,
        "accepted for compatibility; no effect in fabio 1.7.3 either"),
    Key("registry.consul.wait", "60s", duration(lo=0.001, hi=600, hi_why=" (Consul's maximum)"),
        "blocking query wait time (ours; Consul's default is 5m)"),
    Key("registry.consul.maxrate", "20", positive_number,
        "blocking queries per second per watch whose answers bring no new index, after a burst of 2 (ours; real changes are not held)"),
    # ui
    Key("ui.addr", ":9998", listen_addr("ui.addr"),
        "listen address of the admin UI: one listener, plain HTTP, or HTTPS with cs=<source from proxy.cs> "
        "(and strictmatch=, tlsmin=, tlsmax=, tlsciphers= as on proxy.addr); other options are warned about and ignored"),
    Key("ui.access", "rw", choice("ro", "rw"), "ro closes the override editor and its API"),
    Key("ui.health.maxsyncage", "0", duration(zero="off"),
        "/health answers 503 when the last Consul answer is older than this (must exceed wait*17/16) (ours)"),
    Key("ui.title", "", parse_str, "title shown in the UI"),
    Key("ui.color", "light-green", parse_ui_color, "colour of the UI's navigation bar (a Materialize colour class, as in fabio, or #rrggbb)"),
    Key("ui.auth.htpasswd", "", parse_str, "htpasswd file (bcrypt, $apr1$, $1$ or {SHA} entries) for override saves from non-loopback (ours)"),
    Key("ui.auth.token", "", parse_str, "bearer token for override saves from non-loopback (ours)", secret=True),
    Key("ui.auth.loopback", "true", parse_bool,
        "trust loopback peers to save overrides without credentials; set false behind a local reverse proxy (ours)"),
    # logs
    Key("log.level", "INFO", choice("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", any_case=True),
        "log level (upper-cased first, as in fabio)"),
    Key("log.access.target", "", choice("", "stdout"), "access log target: empty (off) or stdout"),
    Key("log.access.format", "common", parse_str, "access log format: common, combined or a template of $field names"),
    Key("log.routes.format", "delta", choice("delta", "all", "detail"),
        "how route changes are logged; any other value is warned about and delta is used, as in fabio",
        lenient=True),
    # matching
    Key("glob.matching.disabled", "false", parse_bool, "match hosts exactly, without wildcards"),
    Key("glob.cache.size", "1000", int_range(0), "size of the glob cache", todo='no effect: glob patterns are compiled once per table build'),
)

KEYS_BY_NAME: Mapping[str, Key] = {k.name: k for k in KEYS}
_BY_LOWER: Mapping[str, Key] = {k.name.lower(): k for k in KEYS}

# fabio keys we know but do not implement yet: accepted with a clear warning, never fatal.
UNSUPPORTED_PREFIXES = (
    "proxy.tls",
    "proxy.flushinterval",
    "proxy.globalflushinterval",
    "proxy.grpc",
    "proxy.log.routes",  # deprecated in fabio too: use log.routes.format
    "registry.consul.serviceMonitors",
    "registry.consul.namespace",
    "registry.custom",
    "registry.file.noroutehtmlpath",
    "metrics.",
    "runtime.",
    "profile.",
    "tracing.",
    "bgp.",
    "ui.routingtable",
    "ui.path",
    "insecure",
)

SECRET_HINTS = ("token", "password", "secret", "key")


# ----------------------------------------------------------------------------- loading


def read_properties(text: str) -> dict[str, str]:
    """Java/magiconair properties: `key = value` or `key: value`, `#`/`!` comments, `\\` continuation."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i].strip()
            i += 1
        m = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        else:
            out[line] = ""
    return out


@dataclass(frozen=True)
class Config:
    """Parsed configuration; `cfg["proxy.addr"]` gives the typed value."""

    values: Mapping[str, Any]
    raw: Mapping[str, str]
    origin: Mapping[str, str]  # key -> "default" | "file" | "env" | "flag"
    warnings: tuple[str, ...] = ()
    listeners: tuple[_listeners.Listener, ...] = ()  # proxy.addr with its cert sources (proxy.cs) resolved
    ui_listener: _listeners.Listener | None = None  # ui.addr with its cert source (HTTPS with a cs=)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def redacted(self) -> dict[str, str]:
        """Raw values with every secret replaced, for the UI and /api/config.

        Secret keys (by flag or by name) are replaced whole; in every other value the password of a URL's
        userinfo is (`https://user:pw@consul:8501` -> `https://user:<redacted>@consul:8501`).
        """
        return {name: shown(name, value) for name, value in sorted(self.raw.items())}


def shown(name: str, value: str) -> str:
    """A raw value as it may be displayed or logged: secrets replaced (see Config.redacted)."""
    key = KEYS_BY_NAME.get(name)
    secret = (key.secret if key else False) or any(h in name.lower() for h in SECRET_HINTS)
    if secret and value:
        return "<redacted>"
    return redact_userinfo(value)


@dataclass
class CommandLine:
    cfg_path: str | None
    flags: dict[str, str]
    version: bool


def parse_args(argv: Iterable[str]) -> CommandLine:
    """fabio's command line: `-cfg path`, `-v`, and `-<key> value` / `-<key>=value` for every property."""
    args = list(argv)
    cfg_path: str | None = None
    flags: dict[str, str] = {}
    # fabio looks for -v/--version among all arguments before anything else: `-a -v -b` prints the version
    version = any(a in ("-v", "--version", "-version") for a in args)
    if version:
        return CommandLine(None, {}, True)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if not a.startswith("-") or a in ("-", "--"):
            raise ConfigError(f"unexpected argument {a!r}; flags look like -proxy.addr :9999")
        name = a.lstrip("-")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("v", "version"):
            version = True
            continue
        if value is None:
            if i >= len(args):
                raise ConfigError(f"flag -{name} needs a value")
            value = args[i]
            i += 1
        value = value.strip().strip('"').strip("'") if name == "cfg" else value
        if name == "cfg":
            if not value:  # fabio: `-cfg=''` is an invalid or missing path, not "no file"
                raise ConfigError("-cfg needs the path of a properties file")
            cfg_path = value
        else:
            flags[name] = value
    return CommandLine(cfg_path, flags, version)


def _canonical(name: str) -> str | None:
    key = KEYS_BY_NAME.get(name) or _BY_LOWER.get(name.lower())
    return key.name if key else None


def _is_unsupported(name: str) -> bool:
    low = name.lower()
    return any(low.startswith(p.lower()) for p in UNSUPPORTED_PREFIXES)


def load(
    argv: Iterable[str] = (), env: Mapping[str, str] | None = None, properties: Mapping[str, str] | None = None
) -> Config:
    """Build the config from flags, environment and the properties file (read from -cfg if not given)."""
    env = os.environ if env is None else env
    cmd = parse_args(argv)
    if properties is None:
        properties = {}
        if cmd.cfg_path and re.match(r"(?i)https?://", cmd.cfg_path):
            raise ConfigError(
                f"-cfg {redact_userinfo(cmd.cfg_path)}: loading the properties from a URL is not supported "
                "(fabio can); download the file and give its path, or set the keys as flags or FABIO_* variables")
        if cmd.cfg_path:
            try:
                with open(cmd.cfg_path, encoding="utf-8") as f:
                    properties = read_properties(f.read())
            except OSError as e:
                raise ConfigError(f"cannot read config file {cmd.cfg_path}: {e.strerror}") from None

    warnings: list[str] = []
    raw: dict[str, str] = {k.name: k.default for k in KEYS}
    origin: dict[str, str] = {k.name: "default" for k in KEYS}

    def take(source: str, items: Mapping[str, str]) -> None:
        for name, value in items.items():
            canon = _canonical(name)
            if canon is None:
                if _is_unsupported(name):
                    warnings.append(f"{source}: {name} is a fabio key that this router does not support yet; ignored")
                else:
                    warnings.append(f"{source}: unknown key {name}; ignored")
                continue
            raw[canon] = value
            origin[canon] = source

    take("file", properties)
    upper_env = {k.upper(): v for k, v in env.items()}
    from_env: dict[str, str] = {}
    for key in KEYS:
        env_name = key.name.replace(".", "_").upper()
        for candidate in ("FABIO_" + env_name, env_name):
            if candidate in upper_env:
                from_env[key.name] = upper_env[candidate]
                break
    take("env", from_env)
    take("flag", cmd.flags)

    for key in KEYS:
        if key.todo and origin[key.name] != "default" and raw[key.name] != key.default:
            warnings.append(f"{origin[key.name]}: {key.name} is {key.todo}")

    values: dict[str, Any] = {}
    for key in KEYS:
        try:
            values[key.name] = key.parse(raw[key.name])
        except ValueError as e:
            problem = f"invalid value {shown(key.name, raw[key.name])!r} for {key.name} (from {origin[key.name]})"
            if not key.lenient:
                raise ConfigError(f"{problem}: expected {e}") from None
            warnings.append(f"{problem}: expected {e}; using {key.default} (as fabio does)")
            values[key.name] = key.parse(key.default)
    for name in ("proxy.addr", "ui.addr"):
        warnings += [f"{origin[name]}: {w}" for w in listener_warnings(name, raw[name])]
    if values["registry.static.noroutehtml"] and values["registry.backend"] != "static":
        warnings.append(f"{origin['registry.static.noroutehtml']}: registry.static.noroutehtml has an effect only "
                        "with registry.backend=static (as in fabio); ignored")
    if values["registry.consul.requireConsistent"] and values["registry.consul.allowStale"] and (
        origin["registry.consul.requireConsistent"] != "default"
    ):
        raise ConfigError(
            "registry.consul.requireConsistent and registry.consul.allowStale cannot both be true; set one to false"
        )
    if values["registry.consul.allowStale"]:
        values["registry.consul.requireConsistent"] = False
    age, wait = values["ui.health.maxsyncage"], values["registry.consul.wait"]
    if age and age <= wait * 17 / 16:
        # A healthy idle blocking query answers up to wait + wait/16 after the previous answer.
        raise ConfigError(f"ui.health.maxsyncage ({age:g}s) must exceed registry.consul.wait * 17/16 ({wait * 17 / 16:g}s)")
    if values["registry.backend"] == "consul" and not values["registry.consul.addr"]:
        raise ConfigError("registry.consul.addr is empty: expected host:port, http://host:port or https://host:port")
    if values["registry.backend"] == "file" and not values["registry.file.path"]:
        raise ConfigError("registry.file.path is required when registry.backend=file")
    try:
        sources = _listeners.parse_cert_sources(raw["proxy.cs"], _LISTENER_DURATION)
    except ValueError as e:
        raise ConfigError(f"invalid proxy.cs (from {origin['proxy.cs']}): {e}") from None
    try:
        listeners = proxy_listeners(raw["proxy.addr"], sources, read_timeout=values["proxy.readtimeout"],
                                    write_timeout=values["proxy.writetimeout"])
    except ValueError as e:
        raise ConfigError(f"invalid proxy.addr (from {origin['proxy.addr']}): {e}") from None
    try:
        [(ui_addr, ui_opts)] = _listeners.split_kv_list(raw["ui.addr"])
        ui_listener = _listeners.parse_listener(ui_addr, ui_opts, sources, _LISTENER_DURATION, parse_bool)
    except ValueError as e:
        raise ConfigError(f"invalid ui.addr (from {origin['ui.addr']}): {e}") from None
    return Config(values=values, raw=raw, origin=origin, warnings=tuple(warnings), listeners=listeners,
                  ui_listener=ui_listener)


def version_text() -> str:
    return f"{__version__}"
