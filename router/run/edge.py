"""The listeners of `proxy.addr` beyond the plain HTTP one: which of them this router serves, and
serving them (TCP, tcp+sni, TLS with its certificate sources).

Every listener fabio accepts is parsed (router/config/listeners.py); one whose protocol is not served
yet stops startup here, naming it, rather than listening and answering with the wrong protocol.
"""

from __future__ import annotations

import logging

from router.config.listeners import Listener
from router.config.settings import Config, ConfigError

log = logging.getLogger("router.edge")

SERVED = {"http": "plain HTTP"}
NOT_YET = {
    "https": "an HTTPS listener", "https+tcp+sni": "an https+tcp+sni listener", "grpc": "a gRPC listener",
    "grpcs": "a gRPC listener", "prometheus": "a Prometheus listener (scrape /metrics on ui.addr instead)",
    "tcp": "a TCP listener", "tcp+sni": "a tcp+sni listener", "tcp-dynamic": "a tcp-dynamic listener",
}


def http_listener(cfg: Config) -> Listener | None:
    """The plain HTTP listener the HTTP server serves (the first one); None if there is none."""
    return next((lst for lst in cfg.listeners if lst.proto == "http"), None)


def check(cfg: Config) -> list[str]:
    """ConfigError for a listener this router cannot serve; warnings for what it leaves out."""
    warnings = []
    http = http_listener(cfg)
    for lst in cfg.listeners:
        if lst.proto not in SERVED:
            raise ConfigError(f"proxy.addr: listener {lst}: {NOT_YET[lst.proto]} is not served by this router yet")
        if lst.proto == "http" and lst is not http:
            raise ConfigError(f"proxy.addr: listener {lst}: only one plain HTTP listener is served yet ({http})")
    return warnings
