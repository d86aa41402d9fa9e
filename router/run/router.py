"""The running router: state, registry, proxy and UI in one event loop. The UI serves at once; the proxy
listeners open after the first routing table or registry.timeout (router/run/gate.py). SIGTERM/SIGINT:
/health turns 503 at once, the proxy keeps serving for proxy.shutdownwait, then both servers stop and
in-flight requests finish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from registry.consul.api import ConsulAPI, ConsulTLS
from registry.consul.noroute import watch_noroute
from registry.consul.register import Registrar, Registration, aliases
from registry.consul.watcher import ConsulWatcher, RegistryStatus
from registry.static import load_text, watch_file
from router.config.settings import Config
from router.listen.ui_deadlines import with_deadlines
from router.listen.uvicorn_server import Server, uvicorn_config, with_ssl
from router.run import edge
from router.run.assemble import build_proxy, proxy_server
from router.run.gate import BOUND, Gate, log_open
from router.run.heap import start_trimmer
from router.run.workers import WorkerPool, worker_count
from router.table.state import RouterState

log = logging.getLogger("router")


class Router:
    """The running router: state, registry, proxy and UI."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        edge.check(cfg)  # a listener this router cannot serve stops the start, named
        self.state = RouterState(
            matcher=cfg["proxy.matcher"],
            glob_matching=not cfg["glob.matching.disabled"],
            routes_log=cfg["log.routes.format"],
        )
        self.status = RegistryStatus(backend=cfg["registry.backend"])
        self.shutting_down = False
        self._open = False  # this process's proxy listeners listen (router/run/gate.py)
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
            self.state.apply = self.workers.forwarding(self.state)  # type: ignore[method-assign]
        self.registrar: Registrar | None = None
        if self.api is not None and cfg["registry.consul.register.enabled"]:
            reg_addr = cfg["registry.consul.register.addr"] or "{}:{}".format(*cfg["ui.addr"])
            self.registrar = Registrar(self.api, Registration(
                cfg["registry.consul.register.name"], reg_addr,
                cfg["registry.consul.register.tags"],
                f"{int(cfg['registry.consul.register.checkInterval'] * 1000)}ms",
                f"{int(cfg['registry.consul.register.checkTimeout'] * 1000)}ms",
                cfg["registry.consul.register.checkTLSSkipVerify"],
                check_scheme="https" if cfg.ui_listener is not None and cfg.ui_listener.tls else "http",  # as fabio
            ), alias_source=lambda: aliases(self.state.table.iter_targets()) if self.state.table else set())
        self.edge = edge.Edge(cfg, self.state, held=True)  # TCP, TLS and gRPC listeners beside the HTTP one
        if self.workers is not None:  # the workers serve them; this Edge shows their summed counters
            self.workers.on_edge = self.edge.absorb
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
            hot_limit=cfg["registry.consul.hotwatches"],
            status=self.status,
            retry=cfg["registry.retry"],
        )
        try:
            await watcher.run()
        finally:
            for t in extra:
                t.cancel()

    @property
    def listening(self) -> bool:
        """The proxy listeners accept connections: this process's, or every worker's (for /health)."""
        return self.workers.listening if self.workers is not None else self._open

    async def _open_proxy(self, gate: Gate, proxy_srv, served: bool) -> None:  # type: ignore[no-untyped-def]
        """The proxy listeners open after the first table or registry.timeout (router/run/gate.py);
        `listening` turns true once every socket listens (`served`: proxy_srv binds its own first)."""
        reason = await gate.wait()
        log_open(reason, self.state, gate.bound, lambda: self.status.errors[-1][1] if self.status.errors else "")
        if self.workers is not None:
            if reason == BOUND:  # each worker opens on its own first table; without one, on this word
                self.workers.open()
            return
        await proxy_srv.open()
        self.edge.open()
        while served and not proxy_srv.started:  # its serve() task has not bound and added its sockets yet
            await asyncio.sleep(0.01)
        self._open = True

    async def serve(self) -> None:
        proxy_srv = proxy_server(self.proxy, self.cfg, held=True)
        ui_lst = self.cfg.ui_listener
        keep_alive = {} if ui_lst is None or ui_lst.idle_timeout is None else {  # fabio's it= on ui.addr; 0: never
            "timeout_keep_alive": ui_lst.idle_timeout or 86400.0}
        proxied_ui = ui_lst is not None and ui_lst.proxy_proto  # pxyproto=true: our acceptor, uvicorn's protocol
        deadlines = (with_deadlines(ui_lst.read_timeout, ui_lst.write_timeout, always=proxied_ui)
                     if ui_lst is not None else None)
        ui_config = uvicorn_config(self.ui, self.cfg["ui.addr"], http=deadlines or "httptools", **keep_alive)
        if self.cfg.ui_listener is not None and self.cfg.ui_listener.tls:
            with_ssl(ui_config, await self.edge.ui_tls(self.cfg.ui_listener))
        ui_server = Server(ui_config)
        plain, others = self.edge.http_split()
        servers: list = [ui_server]
        serving = []
        if self.workers:
            pass  # every proxy listener is served by each worker (router/run/workers.py), none here
        elif plain:
            servers.append(proxy_srv)  # it binds the first plain HTTP listener itself
        elif others:  # TLS, more plain listeners, the PROXY protocol: the main process's server, no socket of its own
            serving.append(asyncio.create_task(proxy_srv.serve(sockets=[]), name="server"))
        if not self.workers:
            await self.edge.start()
            if others:
                await self.edge.start_http(proxy_srv)
        if self.workers:
            await self.workers.start()  # before the registry: no table update can miss a worker
        loop = asyncio.get_running_loop()
        heap = start_trimmer()  # free heap back to the OS after connection bursts (router/run/heap.py)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        gate = Gate(self.state, self.cfg["registry.timeout"])  # before the registry: it sees the first table
        registry = asyncio.create_task(self.registry(), name="registry")
        if proxied_ui:
            self.edge.serve_ui(ui_lst, ui_server)  # type: ignore[arg-type]
        serving += [asyncio.create_task(s.serve(sockets=[]) if s is ui_server and proxied_ui else s.serve(),
                                        name="server") for s in servers]
        opener = asyncio.create_task(self._open_proxy(gate, proxy_srv, bool(plain or others)), name="open")
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *serving], return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:  # a server failed to start (port in use, ...)
            for t in done:
                if t.exception():
                    raise t.exception()  # type: ignore[misc]
        self.shutting_down = True
        opener.cancel()  # not open yet: it stays closed
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
        for s in [*servers, proxy_srv]:
            s.should_exit = True
        if self.workers:
            await self.workers.stop()
        await self.edge.stop(grpc=False)
        await asyncio.gather(*serving, return_exceptions=True)  # open gRPC calls: proxy.grpcshutdowntimeout
        await self.edge.grpc.close()
        registry.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await registry
        if self.api is not None:
            await self.api.close()
        if heap is not None:
            heap.stop()


