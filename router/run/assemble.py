"""Configuration to parts: the proxy app as configured, built the same way in the main process and in
every worker (router/run/workers.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket

from router.config.addrs import client_idle_timeout
from router.config.settings import Config, ConfigError
from router.listen.server import Listener
from router.proxy.accesslog import AccessLog
from router.proxy.auth import parse_schemes
from router.proxy.handler import ProxyApp
from router.proxy.headers import ForwardingHeaders
from router.proxy.policies.engine import Policies
from router.proxy.resilience import Resilience
from router.proxy.websocket import tunnel_protocol
from router.table.state import RouterState

LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "ERROR": logging.ERROR, "FATAL": logging.CRITICAL}



def build_proxy(cfg: Config, state: RouterState) -> ProxyApp:
    """The proxy app as configured; also used by each worker process (router/run/workers.py)."""
    return ProxyApp(
        state,
        strategy=cfg["proxy.strategy"],
        noroute_status=cfg["proxy.noroutestatus"],
        header_timeout=cfg["proxy.responseheadertimeout"],
        dial_timeout=cfg["proxy.dialtimeout"],
        idle_timeout=cfg["proxy.idleconntimeout"],
        max_idle=cfg["proxy.maxconn"],
        keepalive=cfg["proxy.keepalivetimeout"],
        local_ip=cfg["proxy.localip"],
        forwarding=ForwardingHeaders(
            cfg["proxy.localip"], request_id=cfg["proxy.header.requestid"],
            client_ip=cfg["proxy.header.clientip"], tls_header=cfg["proxy.header.tls"],
            tls_value=cfg["proxy.header.tls.value"], sts_maxage=cfg["proxy.header.sts.maxage"],
            sts_subdomains=cfg["proxy.header.sts.subdomains"], sts_preload=cfg["proxy.header.sts.preload"],
            via_id=via_id(cfg)),
        auth_schemes=auth_schemes(cfg),
        max_header_bytes=cfg["proxy.maxheaderbytes"],
        connect_attempts=cfg["proxy.retry.attempts"],
        eject_failures=cfg["proxy.eject.failures"],
        eject_duration=cfg["proxy.eject.duration"],
        access_log=access_log(cfg),
        resilience=Resilience.from_config(cfg),
        policies=policies(cfg),
    )


def proxy_server(proxy: ProxyApp, cfg: Config, held: bool = False) -> Listener:
    """The HTTP listener of proxy.addr for `proxy` (router/listen/server.py), the same in the main process
    and in every worker; `serve(sockets=None)` binds proxy.addr itself. `held`: it listens only at `open()`
    (router/run/gate.py)."""
    first = next((lst for lst in cfg.listeners if lst.proto == "http"), None)  # the one `addr` is
    return Listener(proxy, idle_timeout=client_idle_timeout(cfg.raw.get("proxy.addr", ":9999")),
                    max_head=cfg["proxy.maxheaderbytes"], tunnel=tunnel_protocol(proxy), addr=cfg["proxy.addr"],
                    timeouts=(first.read_timeout, first.write_timeout) if first is not None else (0.0, 0.0),
                    grpc_grace=cfg["proxy.grpcshutdowntimeout"], held=held)


def via_id(cfg: Config) -> str:
    """This router's name in `Via` (router/proxy/headers.py): the same in every worker, different for another
    router (host name and proxy listener), and revealing neither."""
    digest = hashlib.blake2b(f"{socket.gethostname()} {cfg['proxy.addr']!r}".encode(), digest_size=4).hexdigest()
    return f"consul-router-{digest}"


def access_log(cfg: Config) -> AccessLog | None:
    """log.access.target=stdout: the access log in log.access.format; a bad template stops the start."""
    if cfg["log.access.target"] != "stdout":
        return None
    try:
        return AccessLog(cfg["log.access.format"])
    except ValueError as e:
        raise ConfigError(f"invalid log.access.format: {e}") from None


def auth_schemes(cfg: Config) -> dict:
    try:
        return parse_schemes(cfg["proxy.auth"])
    except ValueError as e:
        raise ConfigError(f"invalid proxy.auth: {e}") from None


def policies(cfg: Config) -> Policies:
    """Compression for every route (proxy.gzip.contenttype, as in fabio) and the worker count that the rate
    limits are divided by (router/proxy/policies/ratelimit.py)."""
    workers = cfg["proxy.workers"] or os.cpu_count() or 1  # as router/run/workers.py counts them
    return Policies(gzip_types=cfg["proxy.gzip.contenttype"], min_size=cfg["proxy.compress.minsize"],
                    workers=workers, max_body=cfg["proxy.maxbodybytes"])
