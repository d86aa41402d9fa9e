"""fabio's listener grammar (`proxy.addr`) and certificate sources (`proxy.cs`), parsed purely.

`proxy.addr` is a comma list of listeners, each `[addr=]host:port` followed by `;name=value` options;
`proxy.cs` a comma list of `cs=<name>;type=<file|path|http|consul|vault|vault-pki>;cert=...;...`.
Values may be quoted (`tlsciphers="0x1301,0xc02f"`). fabio's rules, in its words where it has them:

- `proto=` is one of http, https, tcp, tcp+sni, tcp-dynamic, https+tcp+sni, grpc, grpcs, prometheus;
  `cs=<name>` without a `proto=` makes the listener https; https and grpcs need a `cs=`; a `cs=` is only
  allowed on https, tcp, tcp-dynamic, https+tcp+sni, grpcs and prometheus listeners.
- `rt=`/`wt=` (read/write timeout) default to `proxy.readtimeout`/`proxy.writetimeout`; `it=` is the idle
  keep-alive timeout; `pxyproto=true` reads a PROXY protocol header, waiting at most `pxytimeout=`
  (250ms when unset or 0); `strictmatch=true` refuses a handshake whose server name has no certificate;
  `tlsmin=`/`tlsmax=` take ssl30, tls10..tls13 or a number (0x0303); `tlsciphers=` Go's (IANA) cipher
  suite names or numbers; `refresh=` is how often a tcp-dynamic listener looks for new ports.
- A cert source has a `cs=` name, a `type=` and a `cert=`; `key=`, `clientca=`, `refresh=` (3s,
  none for file and consul), `hdr=Name: value` (http) and `caupgcn=` are optional.

We are stricter where fabio silently misreads: a value that does not parse (`strictmatch=yes please`,
`rt=soon`) stops startup with a message naming the listener and the option, instead of becoming false
or zero. Vault sources cannot be tested on our machines (no Vault server) and are refused at startup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PROTOS = ("http", "https", "tcp", "tcp+sni", "tcp-dynamic", "https+tcp+sni", "grpc", "grpcs", "prometheus")
CS_PROTOS = ("https", "tcp", "tcp-dynamic", "https+tcp+sni", "grpcs", "prometheus")
CS_TYPES = ("file", "path", "http", "consul", "vault", "vault-pki")
LISTENER_OPTIONS = ("proto", "rt", "wt", "it", "cs", "strictmatch", "tlsmin", "tlsmax", "tlsciphers",
                    "pxyproto", "pxytimeout", "refresh")

TLS_VERSIONS = {"ssl30": 0x0300, "tls10": 0x0301, "tls11": 0x0302, "tls12": 0x0303, "tls13": 0x0304}

# Go's crypto/tls names (tls.CipherSuites() and tls.InsecureCipherSuites(), the IANA names) and their IDs:
# the names fabio's `tlsciphers=` accepts.
CIPHER_SUITES = {
    "TLS_RSA_WITH_RC4_128_SHA": 0x0005,
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": 0x000A,
    "TLS_RSA_WITH_AES_128_CBC_SHA": 0x002F,
    "TLS_RSA_WITH_AES_256_CBC_SHA": 0x0035,
    "TLS_RSA_WITH_AES_128_CBC_SHA256": 0x003C,
    "TLS_RSA_WITH_AES_128_GCM_SHA256": 0x009C,
    "TLS_RSA_WITH_AES_256_GCM_SHA384": 0x009D,
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": 0xC007,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": 0xC009,
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": 0xC00A,
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": 0xC011,
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": 0xC012,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": 0xC013,
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": 0xC014,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": 0xC023,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": 0xC027,
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": 0xC02F,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": 0xC02B,
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": 0xC030,
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": 0xC02C,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA8,
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA9,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": 0xCCA8,  # Go's older aliases
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": 0xCCA9,
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
}
TLS13_SUITES = frozenset({0x1301, 0x1302, 0x1303})  # not configurable in TLS 1.3 (Go ignores them too)

DEFAULT_PROXY_TIMEOUT = 0.25  # fabio #524: pxyproto without pxytimeout waits 250ms
DEFAULT_CS_REFRESH = 3.0
DEFAULT_DYNAMIC_REFRESH = 1.0  # ours: fabio's zero default re-scans the table in a busy loop


@dataclass(frozen=True, slots=True)
class CertSourceSpec:
    """One `proxy.cs` entry, as written (the sources in router/cert/ act on it)."""

    name: str
    type: str
    cert: str
    key: str = ""
    clientca: str = ""
    refresh: float = 0.0  # seconds; 0 = read once (file) or watched (consul)
    headers: tuple[tuple[str, str], ...] = ()
    caupgcn: str = ""


@dataclass(frozen=True, slots=True)
class Listener:
    """One `proxy.addr` listener with fabio's options, typed."""

    addr: str  # as written, e.g. ":443"
    host: str  # "0.0.0.0" for an empty host
    port: int
    proto: str = "http"
    cert_source: CertSourceSpec | None = None
    read_timeout: float = 0.0  # 0 = none
    write_timeout: float = 0.0
    idle_timeout: float | None = None  # None: unset (the HTTP listener's own default applies)
    strict_match: bool = False
    tls_min: int = 0  # protocol version number, 0 = the library's default
    tls_max: int = 0
    tls_ciphers: tuple[int, ...] = ()
    proxy_proto: bool = False
    proxy_timeout: float = 0.0
    refresh: float = DEFAULT_DYNAMIC_REFRESH
    options: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # as written, for display

    @property
    def tls(self) -> bool:
        """Whether this listener terminates TLS (a `cs=` on it); tcp+sni only peeks at the ClientHello."""
        return self.cert_source is not None

    def __str__(self) -> str:
        return ";".join([self.addr, *(f"{n}={v}" for n, v in self.options)])


# ----------------------------------------------------------------------------- splitting


def split_unquoted(text: str, sep: str) -> list[str]:
    """Split at `sep` outside single or double quotes (fabio's kv lists allow quoted values)."""
    parts, cur, quote = [], [], ""
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == sep:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    parts.append("".join(cur))
    return parts


def split_kv_list(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """`:9999;proto=http,:443;cs=x` -> [(":9999", [("proto", "http")]), (":443", [("cs", "x")])].

    The part without `=` (or `addr=`) is the address; values lose surrounding quotes.
    """
    out = []
    for item in split_unquoted(text, ","):
        if not item.strip():
            continue
        addr, opts = "", []
        for part in split_unquoted(item, ";"):
            part = part.strip()
            if not part:
                continue
            name, eq, value = part.partition("=")
            name, value = name.strip(), value.strip().strip("\"'")
            if not eq or name == "addr":
                addr = value if eq else name
            else:
                opts.append((name, value))
        out.append((addr, opts))
    return out


# ----------------------------------------------------------------------------- values


def _uint16(text: str) -> int:
    """Go's strconv.ParseUint(s, 0, 16): decimal, 0x hex, 0o/leading-0 octal, 0b binary."""
    s = text.strip().lower().replace("_", "")
    try:
        if s.startswith(("0x", "0o", "0b")):
            v = int(s, 0)
        elif len(s) > 1 and s.startswith("0"):
            v = int(s, 8)
        else:
            v = int(s, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 <= v <= 0xFFFF:
        raise ValueError(f"{text!r} is out of range 0..65535")
    return v


def tls_version(text: str) -> int:
    """`tlsmin=`/`tlsmax=`: ssl30, tls10, tls11, tls12, tls13 (any case) or a version number (0x0303)."""
    name = text.strip().lower()
    if name in TLS_VERSIONS:
        return TLS_VERSIONS[name]
    try:
        v = _uint16(name)
    except ValueError:
        raise ValueError(f"a TLS version: {', '.join(TLS_VERSIONS)} or a number such as 0x0303, got {text!r}") from None
    if v not in TLS_VERSIONS.values():
        raise ValueError(f"a TLS version from 0x0300 (ssl30) to 0x0304 (tls13), got {text!r}")
    return v


def tls_ciphers(text: str) -> tuple[int, ...]:
    """`tlsciphers=`: a comma list of Go's cipher suite names (any case) or numbers (0xc02f)."""
    out = []
    for item in text.split(","):
        name = item.strip().upper()
        if not name:
            continue
        if name in CIPHER_SUITES:
            out.append(CIPHER_SUITES[name])
            continue
        try:
            out.append(_uint16(name))
        except ValueError:
            raise ValueError(f"a cipher suite name such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or a number "
                             f"such as 0xc02f, got {item.strip()!r}") from None
    if not out:
        raise ValueError("at least one cipher suite")
    return tuple(out)


# ----------------------------------------------------------------------------- cert sources


def parse_cert_sources(text: str, duration: Callable[[str], float], *, allow_vault: bool = False
                       ) -> dict[str, CertSourceSpec]:
    """`proxy.cs` -> {name: spec}; ValueError naming the source for anything invalid.

    `duration` parses Go durations (router/config/values.py's parser, passed in to keep this module
    free of the key table).
    """
    out: dict[str, CertSourceSpec] = {}
    for first, opts in split_kv_list(text):
        o = dict(opts)
        if first:
            raise ValueError(f"cert source {first!r}: expected name=value items such as cs=mycerts;type=path;cert=/etc/certs")
        name = o.get("cs", "")
        shown = f"cert source {name!r}" if name else f"cert source {';'.join(f'{k}={v}' for k, v in opts)!r}"
        if not name:
            raise ValueError(f"{shown}: missing cs=<name>")
        typ = o.get("type", "")
        if not typ:
            raise ValueError(f"{shown}: missing type= (one of {', '.join(CS_TYPES)})")
        if typ not in CS_TYPES:
            raise ValueError(f"{shown}: unknown type={typ} (one of {', '.join(CS_TYPES)})")
        if typ in ("vault", "vault-pki") and not allow_vault:
            raise ValueError(f"{shown}: type={typ} is not supported by this router (no Vault server to test "
                             "against); use a file, path, http or consul source")
        if not o.get("cert"):
            raise ValueError(f"{shown}: missing cert=")
        unknown = [k for k in o if k not in ("cs", "type", "cert", "key", "clientca", "refresh", "hdr", "caupgcn",
                                             "vaultfetchtoken")]
        if unknown:
            raise ValueError(f"{shown}: unknown option {unknown[0]}= (known: cs, type, cert, key, clientca, "
                             "refresh, hdr, caupgcn)")
        refresh = DEFAULT_CS_REFRESH
        if "refresh" in o:
            try:
                refresh = duration(o["refresh"])
            except ValueError as e:
                raise ValueError(f"{shown}: refresh= must be {e}") from None
        if typ in ("file", "consul"):
            refresh = 0.0  # fabio: a file is read once, a consul prefix is watched
        headers = []
        for k, v in opts:
            if k == "hdr":
                hname, sep, hval = v.partition(": ")
                if not sep or not hname.strip():
                    raise ValueError(f"{shown}: hdr={v!r} must be 'Name: value'")
                headers.append((hname.strip(), hval))
        if name in out:
            raise ValueError(f"{shown}: defined twice")
        out[name] = CertSourceSpec(name, typ, o["cert"], o.get("key", ""), o.get("clientca", ""), refresh,
                                   tuple(headers), o.get("caupgcn", ""))
    return out


# ----------------------------------------------------------------------------- listeners


def split_host_port(addr: str) -> tuple[str, int]:
    """`:9999`, `127.0.0.1:9999`, `[::1]:9999` -> (host, port); an empty host is 0.0.0.0."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError("host:port, e.g. :9999 or 127.0.0.1:9999")
    host = host.strip("[]") or "0.0.0.0"
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:  # "²" is a digit to isdigit()
        raise ValueError("a port from 0 to 65535")
    return host, int(port)


def parse_listener(addr: str, opts: list[tuple[str, str]], sources: Mapping[str, CertSourceSpec] | None,
                   duration: Callable[[str], float], boolean: Callable[[str], bool], *,
                   read_timeout: float = 0.0, write_timeout: float = 0.0) -> Listener:
    """One listener; ValueError with a message that names the option (the caller names the listener).

    `sources` None: check the syntax only (any `cs=` name is taken; `proxy.cs` is another key).
    """
    if not addr:
        raise ValueError("need a listening host:port (e.g. :9999)")
    try:
        host, port = split_host_port(addr)
    except ValueError as e:
        raise ValueError(f"address {addr!r}: expected {e}") from None
    o = dict(opts)
    kw: dict = {"read_timeout": read_timeout, "write_timeout": write_timeout}
    proto = o.get("proto", "")
    if proto and proto not in PROTOS:
        raise ValueError(f"unknown protocol proto={proto} (one of {', '.join(PROTOS)})")
    for name in ("rt", "wt", "it", "pxytimeout", "refresh"):
        if name in o:
            try:
                v = duration(o[name])
            except ValueError as e:
                raise ValueError(f"{name}= must be {e}") from None
            kw[{"rt": "read_timeout", "wt": "write_timeout", "it": "idle_timeout", "pxytimeout": "proxy_timeout",
                "refresh": "refresh"}[name]] = v
    for name, attr in (("strictmatch", "strict_match"), ("pxyproto", "proxy_proto")):
        if name in o:
            try:
                kw[attr] = boolean(o[name])
            except ValueError as e:
                raise ValueError(f"{name}= must be {e}") from None
    for name, attr in (("tlsmin", "tls_min"), ("tlsmax", "tls_max")):
        if name in o:
            try:
                kw[attr] = tls_version(o[name])
            except ValueError as e:
                raise ValueError(f"{name}= must be {e}") from None
    if kw.get("tls_min") and kw.get("tls_max") and kw["tls_min"] > kw["tls_max"]:
        raise ValueError(f"tlsmin={o['tlsmin']} is above tlsmax={o['tlsmax']}")
    if "tlsciphers" in o:
        try:
            kw["tls_ciphers"] = tls_ciphers(o["tlsciphers"])
        except ValueError as e:
            raise ValueError(f"tlsciphers= must be {e}") from None
    if "cs" in o:
        cs = o["cs"]
        if sources is None:
            sources = {cs: CertSourceSpec(cs, "file", "-")}
        if cs not in sources:
            known = ", ".join(sorted(sources)) or "none: proxy.cs is empty"
            raise ValueError(f"unknown certificate source cs={cs} (proxy.cs defines {known})")
        kw["cert_source"] = sources[cs]
        proto = proto or "https"
    proto = proto or "http"
    if "cs" in o and proto not in CS_PROTOS:
        raise ValueError(f"cs= needs proto {', '.join(CS_PROTOS)}; proto={proto} cannot have one")
    if proto in ("https", "grpcs") and "cs" not in o:
        raise ValueError(f"proto={proto} needs a certificate source (cs=<name> from proxy.cs)")
    if kw.get("proxy_proto") and not kw.get("proxy_timeout"):
        kw["proxy_timeout"] = DEFAULT_PROXY_TIMEOUT
    return Listener(addr, host, port, proto, options=tuple(opts), **kw)


def parse_listeners(text: str, sources: Mapping[str, CertSourceSpec] | None, duration: Callable[[str], float],
                    boolean: Callable[[str], bool], *, read_timeout: float = 0.0, write_timeout: float = 0.0
                    ) -> tuple[Listener, ...]:
    """Every listener of `proxy.addr`; ValueError naming the listener and the option."""
    out = []
    for addr, opts in split_kv_list(text):
        shown = ";".join([addr, *(f"{n}={v}" for n, v in opts)])
        try:
            out.append(parse_listener(addr, opts, sources, duration, boolean,
                                      read_timeout=read_timeout, write_timeout=write_timeout))
        except ValueError as e:
            raise ValueError(f"listener {shown}: {e}") from None
    if not out:
        raise ValueError("at least one listener, e.g. :9999")
    seen: dict[tuple[str, int], Listener] = {}
    for lst in out:
        if lst.port and (lst.host, lst.port) in seen:
            raise ValueError(f"listener {lst}: {lst.host}:{lst.port} is also listener {seen[(lst.host, lst.port)]}")
        seen[(lst.host, lst.port)] = lst
    return tuple(out)


def unknown_options(text: str) -> list[tuple[str, str, str]]:
    """(listener, option, value) of every option fabio does not know either: warned about, ignored."""
    out = []
    for addr, opts in split_kv_list(text):
        shown = ";".join([addr, *(f"{n}={v}" for n, v in opts)])
        out += [(shown, n, v) for n, v in opts if n not in LISTENER_OPTIONS]
    return out
