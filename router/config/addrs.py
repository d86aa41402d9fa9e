"""Values of the listen addresses (`proxy.addr`, `ui.addr`): fabio's `addr[;opt=value...][,addr2;...]`.

The typed value of each key, the warnings for options or listeners we do not act on, the idle timeout of
`it=`, and the full proxy listener list (router/config/listeners.py parses it; this module gives it our
duration and boolean parsers). Apart from router/config/values.py because these need the listener
parser and say what the proxy port serves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from router.config import listeners as _listeners
from router.config.values import duration, parse_bool, parse_int

FABIO_LISTENER_PROTOS = ("http", "https", "tcp", "tcp+sni", "tcp-dynamic", "https+tcp+sni", "grpc", "grpcs",
                         "prometheus")
SUPPORTED_LISTENER_OPTIONS = {"proxy.addr": ("proto", "it"),
                              "ui.addr": ("proto", "it", "rt", "wt", "cs", "strictmatch", "tlsmin", "tlsmax",
                                          "tlsciphers", "pxyproto", "pxytimeout")}
_LISTENER_OPTION_NOTES = {
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
    """Parser of proxy.addr / ui.addr: the first listener -> (host, port); ui.addr's is HTTP or HTTPS."""

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
    return _listeners.parse_listeners(text, sources, LISTENER_DURATION, parse_bool,
                                      read_timeout=read_timeout, write_timeout=write_timeout)


LISTENER_DURATION = duration()


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
