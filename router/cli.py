"""Entry point: `python -m router -cfg fabio.properties [-key value ...]`.

Starts, in one event loop: the registry (Consul watcher, or a static/file source), the proxy on
proxy.addr and the admin UI on ui.addr. SIGTERM/SIGINT: /health turns 503 at once, the proxy keeps
serving for proxy.shutdownwait, then both servers stop and in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence

import uvicorn

from registry.consul_api import ConsulAPI, ConsulTLS
from registry.consul_watcher import ConsulWatcher, RegistryStatus
from registry.noroute import watch_noroute
from registry.register import Registrar, Registration, aliases
from registry.static import load_text, watch_file
from router import __version__
from router.accesslog import AccessLog
from router.auth import parse_schemes
from router.config import Config, ConfigError, client_idle_timeout, load, parse_args
from router.fastbody import FastBodyHttpToolsProtocol
from router.fastwrite import CoalescingHttpToolsProtocol
from router.headers import ForwardingHeaders
from router.proxy import ProxyApp
from router.request_guard import GuardedHttpToolsProtocol
from router.state import RouterState
from router.websocket import tunnel_protocol
from router.workers import WorkerPool, tune_gc, worker_count

log = logging.getLogger("router")

_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "ERROR": logging.ERROR, "FATAL": logging.CRITICAL}


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to us: two servers share one process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: object, addr: tuple[str, int], http: object = "httptools", ws: object = "none",
                    **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=addr[0],
        port=addr[1],
        loop="none",
        http=http,  # type: ignore[arg-type]
        ws=ws,  # the proxy passes its own byte-level tunnel class (router/websocket.py)
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the peer address is the socket's: X-Forwarded-* must not rewrite it (allow=, XFF)
        date_header=False,
        **extra,
    )


def build_proxy(cfg: Config, state: RouterState) -> ProxyApp:
    """The proxy app as configured; also used by each worker process (router/workers.py)."""
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
    )


def via_id(cfg: Config) -> str:
    """This router's name in `Via` (router/headers.py): the same in every worker, different for another
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


class ProxyProtocol(GuardedHttpToolsProtocol, FastBodyHttpToolsProtocol, CoalescingHttpToolsProtocol):
    """The proxy listener's HTTP protocol: parser errors with their reason, request bodies without
    uvicorn's copies (router/fastbody.py), and coalesced small writes."""


def proxy_server_config(proxy: ProxyApp, cfg: Config, app: object = None) -> uvicorn.Config:
    """uvicorn settings of the proxy listener, the same in the main process and in every worker."""
    return _uvicorn_config(app or proxy, cfg["proxy.addr"], http=ProxyProtocol,
                           ws=tunnel_protocol(proxy),
                           timeout_keep_alive=client_idle_timeout(cfg.raw.get("proxy.addr", ":9999")))


class Router:
    """The running router: state, registry, proxy and UI."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.state = RouterState(
            matcher=cfg["proxy.matcher"],
            glob_matching=not cfg["glob.matching.disabled"],
            routes_log=cfg["log.routes.format"],
        )
        self.status = RegistryStatus(backend=cfg["registry.backend"])
        self.shutting_down = False
        self.api: ConsulAPI | None = None
        if cfg["registry.backend"] == "consul":
            consistency = "consistent" if cfg["registry.consul.requireConsistent"] else (
                "stale" if cfg["registry.consul.allowStale"] else "")
            self.api = ConsulAPI(
                cfg["registry.consul.addr"], cfg["registry.consul.token"],
                consistency=consistency, wait=cfg["registry.consul.wait"],
                tls=ConsulTLS(*(cfg[f"registry.consul.tls.{k}"]
                                for k in ("cafile", "capath", "certfile", "keyfile", "insecureskipverify"))),
            )
            self.status.addr = self.api.base_url
        self.proxy = build_proxy(cfg, self.state)
        # several workers: they serve proxy.addr, this process keeps the one registry watcher and the UI
        n = worker_count(cfg["proxy.workers"])
        self.workers = WorkerPool(cfg, n) if n > 1 else None
        if self.workers is not None:
            self.state.apply = self.workers.forwarding(self.state.apply)  # type: ignore[method-assign]
        self.registrar: Registrar | None = None
        if self.api is not None and cfg["registry.consul.register.enabled"]:
            reg_addr = cfg["registry.consul.register.addr"] or "{}:{}".format(*cfg["ui.addr"])
            self.registrar = Registrar(self.api, Registration(
                cfg["registry.consul.register.name"], reg_addr,
                cfg["registry.consul.register.tags"],
                f"{int(cfg['registry.consul.register.checkInterval'] * 1000)}ms",
                f"{int(cfg['registry.consul.register.checkTimeout'] * 1000)}ms",
                cfg["registry.consul.register.checkTLSSkipVerify"],
            ), alias_source=lambda: aliases(self.state.table.iter_targets()) if self.state.table else set())
        from ui.app import create_app  # the UI depends on the router, not the other way round

        self.ui = create_app(self)

    def _set_noroute(self, html: str) -> None:
        self.proxy.noroute_html = html
        if self.workers is not None:
            self.workers.set_noroute(html)

    async def registry(self) -> None:
        cfg = self.cfg
        backend = cfg["registry.backend"]
        if backend == "static":
            if cfg["registry.static.noroutehtml"]:  # fabio's static backend serves it as the no-route page
                self._set_noroute(cfg["registry.static.noroutehtml"])
            load_text(cfg["registry.static.routes"], "static", self.state.apply, self.status)
            return
        if backend == "file":
            await watch_file(cfg["registry.file.path"], self.state.apply, self.status)
            return
        assert self.api is not None
        extra = []
        if cfg["registry.consul.noroutehtmlpath"]:
            extra.append(asyncio.create_task(watch_noroute(self.api, cfg["registry.consul.noroutehtmlpath"],
                                                           self._set_noroute, max_rate=cfg["registry.consul.maxrate"])))
        if self.registrar is not None:
            extra.append(asyncio.create_task(self.registrar.run()))
        watcher = ConsulWatcher(
            self.api,
            self.state.apply,
            tagprefix=cfg["registry.consul.tagprefix"],
            kvpath=cfg["registry.consul.kvpath"],
            statuses=cfg["registry.consul.service.status"],
            checks_all=cfg["registry.consul.checksRequired"] == "all",
            unrun_hold=cfg["registry.consul.unrunhold"],
            max_rate=cfg["registry.consul.maxrate"],
            status=self.status,
        )
        try:
            await watcher.run()
        finally:
            for t in extra:
                t.cancel()

    async def serve(self) -> None:
        proxy_server = _Server(proxy_server_config(self.proxy, self.cfg))
        ui_server = _Server(_uvicorn_config(self.ui, self.cfg["ui.addr"]))
        servers = (ui_server,) if self.workers else (proxy_server, ui_server)
        if self.workers:
            await self.workers.start()  # before the registry: no table update can miss a worker
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        registry = asyncio.create_task(self.registry(), name="registry")
        serving = [asyncio.create_task(s.serve(), name="server") for s in servers]
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *serving], return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:  # a server failed to start (port in use, ...)
            for t in done:
                if t.exception():
                    raise t.exception()  # type: ignore[misc]
        self.shutting_down = True
        if self.registrar is not None:
            await self.registrar.deregister_all()
            grace = self.cfg["proxy.deregistergraceperiod"]
            if grace > 0:
                log.info("deregistered from Consul; waiting %.1fs (proxy.deregistergraceperiod)", grace)
                await asyncio.sleep(grace)
        wait = self.cfg["proxy.shutdownwait"]
        if wait > 0:
            log.info("shutting down: /health reports 503, still serving for %.1fs", wait)
            await asyncio.sleep(wait)
        for s in servers:
            s.should_exit = True
        if self.workers:
            await self.workers.stop()
        await asyncio.gather(*serving, return_exceptions=True)
        registry.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await registry
        if self.api is not None:
            await self.api.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if parse_args(argv).version:
            print(__version__)
            return 0
        cfg = load(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=_LEVELS[cfg["log.level"]], format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Consul request is noise
    for w in cfg.warnings:
        log.warning("config: %s", w)
    log.info("consul-router %s: proxy on %s:%d, ui on %s:%d, registry %s", __version__, *cfg["proxy.addr"],
             *cfg["ui.addr"], cfg["registry.backend"])
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    tune_gc()
    try:
        router = Router(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        runner(router.serve())
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
