"""Request and response header rewriting for the proxy, as fabio does it.

Hop-by-hop headers are dropped both ways; the forwarding headers (X-Forwarded-*, X-Real-Ip,
Forwarded) are added. A client cannot make us drop a forwarding header by naming it in `Connection`
(fabio's protection against that trick), because those names are ignored there.

Ours: each forwarded request gets this router's `Via` entry (RFC 9110 7.6.3), and a request that
already carries it MAX_VISITS - 1 times is refused (508) instead of forwarded: a route whose target
is the router itself (or a chain of routers back to it) would otherwise loop until memory runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from router.proxy.upstream_request import HeaderBlock

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_VISITS = 5  # a request that reaches this router the 5th time is a loop: a legitimate chain repeats less


class RoutingLoop(Exception):
    """The request already went through this router MAX_VISITS - 1 times (its own Via entries)."""


PROTECTED = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "x-real-ip",
    }
)
HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
# request header names request_block looks at; any other passes through as it came
_NOTED = HOP_BY_HOP_BYTES | {b"host", b"via", b"content-length", b"user-agent"} | {h.encode() for h in PROTECTED}
_UNSAFE = frozenset({b"via"} | {h.encode() for h in PROTECTED})  # request_block leaves these to request_headers
TAILS_MAX = 4096  # cached header tails per worker (client address x Host x target options); then start afresh


def _connection_tokens(values: Iterable[str], protected: frozenset[str] = PROTECTED) -> set[str]:
    out = set()
    for v in values:
        for tok in v.split(","):
            tok = tok.strip().lower()
            if tok and tok not in protected:
                out.add(tok)
    return out


_HTTP_SCHEME = {"ws": "http", "wss": "https"}  # X-Forwarded-Proto of an upgrade (fabio #133: java clients)


def _request_scheme(xfp: str | None, fwd: str | None, conn_scheme: str) -> str:
    """fabio's scheme(r): the client's X-Forwarded-Proto when it sent no Forwarded, the `proto=` of its
    Forwarded when it sent no X-Forwarded-Proto (so each fills in the other), else the connection's."""
    if xfp and not fwd:
        return xfp
    if fwd and not xfp:
        _, sep, rest = fwd.partition("proto=")
        if sep:
            return rest.partition(";")[0]
    return conn_scheme


_TLS_NAMES = {0x0300: "ssl30", 0x0301: "tls10", 0x0302: "tls11", 0x0303: "tls12"}  # fabio's; 1.3 is 0x0304


def _tls_forwarded(tls: dict) -> str:
    """`; tlsver=tls12; tlscipher=0xc02f` as fabio appends it to `Forwarded` (unknown versions in hex)."""
    out = ""
    v = tls.get("tls_version")
    if v:
        out += "; tlsver=" + _TLS_NAMES.get(v, f"0x{v:04x}")
    c = tls.get("cipher_suite")
    if c:
        out += f"; tlscipher=0x{c:04x}"
    return out


class ForwardingHeaders:
    """Built once from the config: the forwarding headers plus fabio's optional `proxy.header.*` ones.

    `request_id` (a new UUID per request, replacing the client's), `client_ip` (the peer address),
    `tls_header`/`tls_value` (set on TLS requests, removed from plain ones) are protected like the
    X-Forwarded-* headers, so naming them in `Connection` does not remove them. `sts` is the
    Strict-Transport-Security value added to TLS responses ("" = off).
    """

    def __init__(self, local_ip: str = "", *, request_id: str = "", client_ip: str = "", tls_header: str = "",
                 tls_value: str = "", sts_maxage: int = 0, sts_subdomains: bool = False,
                 sts_preload: bool = False, via_id: str = "") -> None:
        self.local_ip = local_ip
        self.via = f"1.1 {via_id}" if via_id else ""  # this router's Via entry (see the module docstring)
        self.request_id = request_id.lower()
        # fabio ignores clientip when it names a header it already sets
        self.client_ip = "" if client_ip.lower() in ("x-forwarded-for", "x-real-ip") else client_ip.lower()
        self.tls_header = tls_header.lower()
        self.tls_value = tls_value
        self.own = frozenset(h for h in (self.request_id, self.client_ip, self.tls_header) if h)
        self.protected = PROTECTED | self.own
        sts = f"max-age={sts_maxage}" if sts_maxage > 0 else ""
        if sts and sts_subdomains:
            sts += "; includeSubdomains"
        if sts and sts_preload:
            sts += "; preload"
        self.sts = sts.encode()
        self._tails: dict[tuple, bytes] = {}  # see request_block

    def request_headers(self, scope: dict[str, Any], host: str, target: Any) -> tuple[list[tuple[str, str]], bool]:
        """Headers for the upstream request, and whether the request has a body to stream."""
        out: list[tuple[str, str]] = []
        conn_values: list[str] = []
        vias: list[str] = []
        seen: dict[str, str] = {}
        has_body = False
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name == "connection":
                conn_values.append(value)
                continue
            if name == "via":
                vias.append(value)
                continue
            if name == "content-length":
                has_body = value.strip() not in ("", "0")
            elif name == "transfer-encoding":
                has_body = True
            if name in HOP_BY_HOP or name == "host":
                continue
            if name in seen and name in PROTECTED and name != "x-forwarded-for":
                continue
            seen[name] = value if name not in seen else seen[name] + ", " + value
            out.append((name, value))
        if conn_values:
            drop = _connection_tokens(conn_values, self.protected)
            if drop:
                out = [(n, v) for n, v in out if n not in drop]

        client = scope.get("client") or ("", 0)
        ip = client[0] or ""
        conn_scheme = scope.get("scheme", "http")  # ws/wss for an upgrade (router/proxy/websocket.py)
        scheme = _HTTP_SCHEME.get(conn_scheme, conn_scheme)
        xff = seen.get("x-forwarded-for")
        if xff is not None:
            out = [(n, v) for n, v in out if n != "x-forwarded-for"]
        out.append(("x-forwarded-for", f"{xff}, {ip}" if xff else ip))
        if "x-real-ip" not in seen:
            out.append(("x-real-ip", ip))
        xfp, fwd = seen.get("x-forwarded-proto"), seen.get("forwarded")
        proto = _request_scheme(xfp, fwd, conn_scheme)
        if not xfp:
            if xfp is not None:
                out = [(n, v) for n, v in out if n != "x-forwarded-proto"]
            out.append(("x-forwarded-proto", _HTTP_SCHEME.get(proto, proto)))
        if "x-forwarded-port" not in seen:
            _, sep, port = host.rpartition(":")
            if not (sep and port.isascii() and port.isdigit()):
                port = "443" if scheme == "https" else "80"
            out.append(("x-forwarded-port", port))
        if "x-forwarded-host" not in seen and host:
            out.append(("x-forwarded-host", host))
        if fwd is None:
            fwd = f"for={ip}; proto={proto}"
        else:
            out = [(n, v) for n, v in out if n != "forwarded"]
        if self.local_ip:
            fwd += f"; by={self.local_ip}"
        fwd += f"; httpproto=http/{scope.get('http_version', '1.1')}"
        if scheme == "https":  # fabio adds the TLS version and cipher suite (the ASGI TLS extension's numbers)
            tls = (scope.get("extensions") or {}).get("tls")
            if tls:
                fwd += _tls_forwarded(tls)
        out.append(("forwarded", fwd))
        if target.strip:
            if "x-forwarded-prefix" in seen:
                out = [(n, v) for n, v in out if n != "x-forwarded-prefix"]
            out.append(("x-forwarded-prefix", target.strip))
        if target.host_header:  # host=<name>, or for host=dst the target URL's host as written (table.py)
            out.append(("host", target.host_header))
        elif host:
            out.append(("host", host))
        if "user-agent" not in seen:
            out.append(("user-agent", ""))
        if self.via:
            if vias:
                before = ", ".join(vias)
                if before.count(self.via) >= MAX_VISITS - 1:
                    raise RoutingLoop(f"routing loop: the request has passed this router {MAX_VISITS} times")
                out.append(("via", f"{before}, {self.via}"))
            else:
                out.append(("via", self.via))
        elif vias:
            out.append(("via", ", ".join(vias)))
        own = self.own
        if own:
            out = [(n, v) for n, v in out if n not in own]
            if self.request_id:
                out.append((self.request_id, str(uuid.uuid4())))
            if self.client_ip:
                out.append((self.client_ip, ip))
            if self.tls_header and scheme == "https":
                out.append((self.tls_header, self.tls_value))
        return out, has_body

    def request_block(self, scope: dict[str, Any], host: str, target: Any,
                      request_target: bytes) -> tuple[HeaderBlock | None, bool]:
        """The upstream request's head for `request_target` (path and query, encoded), with request_headers()'
        headers and the framing of the client's body (the stream the proxy then sends), for the common
        request: no Via, no forwarding header of its own, no Connection but `keep-alive`, a Host. (None,
        False) for any other: request_headers() and prepare() serve it.

        Only the client's other headers are walked; what follows them (X-Forwarded-*, Forwarded, Host,
        User-Agent, Via) depends on the client address, Host, scheme, version and the target's strip= and
        host=, so it is made once by request_headers() itself and cached: the two cannot differ."""
        if self.own or not host:
            return None, False
        parts = [scope["method"].encode("latin-1", "replace"), b" ", request_target, b" HTTP/1.1\r\n"]
        has_body = has_length = has_ua = False
        for n, v in scope["headers"]:
            if n in _NOTED:
                if n in _UNSAFE:
                    return None, False
                if n == b"content-length":
                    has_body = v.strip() not in (b"", b"0")
                    has_length = True
                elif n == b"user-agent":
                    has_ua = True
                elif n == b"transfer-encoding":
                    has_body = True
                    continue
                elif n == b"connection":
                    if v.lower() != b"keep-alive":  # names headers to drop: request_headers decides
                        return None, False
                    continue
                else:  # Host, hop-by-hop
                    continue
            parts += (n, b": ", v, b"\r\n")
        scheme = scope.get("scheme", "http")
        tls = None
        if scheme == "https":
            t = (scope.get("extensions") or {}).get("tls") or {}
            tls = (t.get("tls_version"), t.get("cipher_suite"))
        client = scope.get("client")
        key = (client[0] if client else "", host, scheme, scope.get("http_version", "1.1"), target.strip,
               target.host_header, has_ua, tls)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tail(scope, host, target, has_ua, key)
        parts.append(tail)
        chunked = has_body and not has_length  # the client's own chunked body: chunked on, as prepare() does
        parts.append(b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n")
        return HeaderBlock(b"".join(parts), chunked), has_body

    def _tail(self, scope: dict[str, Any], host: str, target: Any, has_ua: bool, key: tuple) -> bytes:
        """What request_headers() appends after the client's own headers, encoded (see request_block)."""
        bare = {**scope, "headers": [(b"user-agent", b"")] if has_ua else []}
        out, _ = self.request_headers(bare, host, target)
        if has_ua:
            out = out[1:]  # the client's own User-Agent stays where it was
        tail = "".join(f"{n}: {v}\r\n" for n, v in out).encode("latin-1", "replace")
        if len(self._tails) >= TAILS_MAX:
            self._tails.clear()
        self._tails[key] = tail
        return tail

    def tls_response_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """For TLS requests: with `proxy.header.sts.maxage` > 0 set HSTS, replacing the upstream's."""
        if not self.sts:
            return headers
        return [*(h for h in headers if h[0] != b"strict-transport-security"), (b"strict-transport-security", self.sts)]

    @staticmethod
    def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Upstream response headers minus hop-by-hop ones (and those its Connection header names)."""
        out = []
        named: set[bytes] | None = None
        for n, v in raw:  # one pass, one lower() per header: this runs for every answer
            ln = n.lower()
            if ln in HOP_BY_HOP_BYTES:
                if ln == b"connection" and v.lower() != b"keep-alive":  # keep-alive: a hop-by-hop name already
                    named = (named or set()) | {t.strip().lower() for t in v.split(b",") if t.strip()}
                continue
            out.append((ln, v))
        return out if not named else [h for h in out if h[0] not in named]
