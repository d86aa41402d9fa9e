"""Several proxy worker processes fed by the ONE registry watcher of the main process.

Why processes: one Python event loop tops out at one core, and the proxy's per-request cost is
CPU. Each worker serves the proxy on proxy.addr (router/listen/) with its own SO_REUSEPORT socket
(the kernel spreads new connections over the workers; one shared socket lets the first awake
worker grab a whole burst). The main process keeps the registry watcher, the UI and the one
TableBuilder; after every `RouterState.apply(services, manual)` it sends every worker, over a
socketpair, the final targets of the route keys that changed, and the worker assembles its table from
them with the builder's own function (router/table/replica.py): a worker holds its table and nothing
else of the routes (at 100,000 instances the commands and the builder's caches were more than half of
a worker's memory, issue 18). A worker started later (or restarted after a crash) first gets the whole
current table. A worker binds its sockets at once but listens on them only once it has a table, or when the main process says so (`registry.timeout` passed
without one: router/run/gate.py), so the kernel never hands a connection to a worker that could only
answer 503 "routing table not loaded yet". Workers stop when the main process says so or when the pipe
closes (the main process died), and on SIGTERM keep serving for proxy.shutdownwait like the main
process does.

Frames on the pipe: 4-byte big-endian length + pickle. Main -> worker: ("config", Config),
("routes", changes, fresh, left, final) (router/table/assemble.py's changes, a large update in several
frames, route_frames; `fresh`: on an empty table; `left`: the sources that left, for the proxy's swap
listeners; `final`: the update's last frame, the worker swaps its table), ("noroute", html), ("open",),
("stop",). Worker -> main: ("bound", pid) (its
sockets are bound; it listens on them at its first table or at "open"), ("open", pid) (it listens now),
("stats", pid, requests, routes, counters), where counters holds the per-route request counters that
changed since the last report (router/proxy/stats.py) and the process-wide ones (no-route, WebSockets, upstream
connect failures, retries, ejections); the main process sums them for /metrics and the routes page. Only the main process and its own children hold the pipe ends.

Past 400 lines on purpose: both ends of the one pipe protocol (the main process's pool, the worker's
loop) stay together, so every message is read beside the code that answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.cert.pairs import CertError
from router.config.settings import ConfigError
from router.listen.server import listen_socket
from router.proxy.instance import merge_docs
from router.proxy.stats import merge, proxy_counters, prune
from router.run import edgestats
from router.run.assemble import LEVELS, build_proxy, proxy_server
from router.run.edge import Edge
from router.run.heap import start_trimmer
from router.table.assemble import keyed
from router.table.replica import TableReplica
from router.table.state import RouterState

log = logging.getLogger("router.workers")
_LEN = struct.Struct(">I")


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a proxy process; call once imports are done.

    Every proxied request allocates a few dozen short-lived containers, so with CPython's default
    gen-0 threshold (700) a collection runs every few requests, and each older-generation pass walks
    every imported module's objects. Freezing what exists at startup and collecting less often cut a
    worker's p99 latency about in half in A/B runs (docs/datapath.md) at no throughput cost.
    The older generations keep CPython's ratios (10, 10): with (50, 100) a full collection needed about
    100M allocations, so cyclic garbage piled up and the 10-minute soak grew RSS by 10.9%.
    """
    gc.freeze()
    gc.set_threshold(20000, 10, 10)


def worker_count(setting: int) -> int:
    """proxy.workers: 0 (the default) means one worker per core."""
    return setting if setting > 0 else (os.cpu_count() or 1)


def _frame(msg: tuple) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


ROUTES_PER_FRAME = 2000  # an update's changed keys per "routes" frame (router/table/replica.py says why)


def route_frames(changes: Mapping[Any, Any], fresh: bool, left: frozenset[str]) -> list[bytes]:
    """One table update for the workers: its changed keys in frames of ROUTES_PER_FRAME; the first says
    whether it starts from an empty table, the last carries `left` and makes the worker swap."""
    if len(changes) <= ROUTES_PER_FRAME:
        return [_frame(("routes", changes, fresh, left, True))]
    items = list(changes.items())
    n = len(items)
    return [_frame(("routes", dict(items[i:i + ROUTES_PER_FRAME]), fresh and i == 0,
                    left if i + ROUTES_PER_FRAME >= n else frozenset(), i + ROUTES_PER_FRAME >= n))
            for i in range(0, n, ROUTES_PER_FRAME)]


async def _read(reader: asyncio.StreamReader) -> tuple | None:
    """One message, or None at EOF (the other side is gone)."""
    try:
        size = _LEN.unpack(await reader.readexactly(_LEN.size))[0]
        return pickle.loads(await reader.readexactly(size))  # noqa: S301 - our own child/parent only
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


# --------------------------------------------------------------------------- main process side


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    writer: asyncio.StreamWriter
    reader_task: asyncio.Task[None] | None = None
    bound: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    open: bool = False  # it listens on the proxy ports (after its first table, or told to)
    requests: int = 0
    routes: int | None = None
    route_stats: dict[Any, Any] = field(default_factory=dict)  # stats.Key -> stats.Snapshot, latest
    counters: dict[str, int] = field(default_factory=dict)
    ejected: list[tuple[str, int]] = field(default_factory=list)  # instances this worker ejects now
    instances: dict[str, Any] = field(default_factory=dict)  # its instance states (router/proxy/balance.py)
    edge: dict[str, Any] | None = None  # its TCP, gRPC and certificate counters (router/run/edgestats.py)


class WorkerPool:
    """Starts, feeds, restarts and stops the proxy workers (main process)."""

    def __init__(self, cfg: Any, count: int) -> None:
        self.cfg = cfg
        self.count = count
        self.workers: list[_Worker] = []
        self.state: RouterState | None = None  # once it has a table: a worker started later starts from it
        self.opened = False  # told to listen without a table (registry.timeout passed): later workers too
        self.stopping = False
        self.noroute = ""
        # counters of workers that exited, so the sums stay monotonic across a restart
        self.retired_routes: dict[Any, Any] = {}
        self.retired_counters: dict[str, int] = {}
        self.retired_edge: dict[str, Any] | None = None
        self.on_edge: Callable[[dict[str, Any]], None] | None = None  # the main Edge's absorb (TCP/TLS/gRPC sums)

    def forwarding(self, state: RouterState) -> Callable[..., Any]:
        """Wrap `state.apply`: apply in the main process (the UI shows it) and send every worker what
        changed in the table, each changed key's final targets (router/table/replica.py)."""
        apply = state.apply
        self.state = state

        def apply_and_forward(services: Mapping[str, Sequence[Any] | None], manual: Sequence[Any] | None = None) -> Any:
            table = apply(services, manual)
            frames = route_frames(state.builder.changes, state.builder.fresh, state.left)
            for w in self.workers:
                if not w.writer.is_closing():
                    w.writer.writelines(frames)
            return table

        return apply_and_forward

    def set_noroute(self, html: str) -> None:
        """The no-route page from Consul KV reaches every worker, and later ones on start."""
        self.noroute = html
        for w in self.workers:
            if not w.writer.is_closing():
                w.writer.write(_frame(("noroute", html)))

    def open(self) -> None:
        """Every worker listens now, with or without a table (router/run/gate.py: registry.timeout passed)."""
        self.opened = True
        for w in self.workers:
            if not w.writer.is_closing():
                w.writer.write(_frame(("open",)))

    async def start(self) -> None:
        """Start every worker and wait until each has bound its sockets on proxy.addr (raises OSError if one
        cannot); each listens once it has a table."""
        for i in range(self.count):
            self.workers.append(await self._spawn(i))
        for w in self.workers:
            await self._wait_bound(w)

    async def _spawn(self, index: int) -> _Worker:
        parent, child = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.run.workers", str(child.fileno())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
        )
        child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        w = _Worker(index, proc, writer)
        writer.write(_frame(("config", self.cfg)))
        if self.state is not None and self.state.table is not None:  # a late or restarted worker: the whole table
            writer.writelines(route_frames(keyed(self.state.table), True, frozenset()))
        if self.noroute:
            writer.write(_frame(("noroute", self.noroute)))
        if self.opened:
            writer.write(_frame(("open",)))
        w.reader_task = asyncio.create_task(self._listen(w, reader), name=f"worker-{index}")
        return w

    async def _wait_bound(self, w: _Worker) -> None:
        done, _ = await asyncio.wait([w.bound, w.reader_task], timeout=60,  # type: ignore[list-item]
                                     return_when=asyncio.FIRST_COMPLETED)
        if w.bound not in done:
            if w.proc.poll() == 2:  # it refused a listener's configuration (a certificate source): named above
                raise ConfigError(f"proxy worker {w.index} (pid {w.proc.pid}) refused the configuration")
            raise OSError(f"proxy worker {w.index} (pid {w.proc.pid}) could not bind proxy.addr")

    async def _listen(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        while (msg := await _read(reader)) is not None:
            if msg[0] == "bound" and not w.bound.done():
                w.bound.set_result(None)
            elif msg[0] == "open":
                w.open = True
            elif msg[0] == "stats":
                w.requests, w.routes = msg[2], msg[3]
                if len(msg) > 4:
                    w.route_stats.update(msg[4]["routes"])
                    w.counters = msg[4]["counters"]
                    w.ejected = msg[4].get("ejected", [])
                    w.instances = msg[4].get("instances", {})
                    if "edge" in msg[4]:
                        w.edge = msg[4]["edge"]
                        self._edge_changed()
        # the worker is gone
        self.retired_routes = merge([self.retired_routes, w.route_stats])
        for k, v in w.counters.items():
            if k != "websockets_open":
                self.retired_counters[k] = self.retired_counters.get(k, 0) + v
        self.retired_edge = edgestats.merge([self.retired_edge, edgestats.retired(w.edge)])
        w.route_stats, w.counters, w.ejected, w.instances, w.edge = {}, {}, [], {}, None
        self._edge_changed()
        code = await asyncio.get_running_loop().run_in_executor(None, w.proc.wait)
        w.writer.close()
        if self.stopping or not w.bound.done():
            return
        log.warning("proxy worker %d (pid %d) exited with %s; starting a new one", w.index, w.proc.pid, code)
        await asyncio.sleep(0.5)  # no tight restart loop if it dies at once
        if self.stopping:
            return
        nw = await self._spawn(w.index)
        self.workers[self.workers.index(w)] = nw
        with contextlib.suppress(OSError):
            await self._wait_bound(nw)

    def _edge_changed(self) -> None:
        if self.on_edge is not None:
            self.on_edge(edgestats.merge([self.retired_edge, *(w.edge for w in self.workers)]))

    def route_stats(self, table: Any = None) -> dict[Any, Any]:
        """Per-route counters summed over every worker (stats.Key -> stats.Snapshot); with `table`, the
        counters of targets no longer in it are dropped first (each worker drops its own every minute)."""
        if table is not None:
            for part in (self.retired_routes, *(w.route_stats for w in self.workers)):
                prune(part, table)
        return merge([self.retired_routes, *(w.route_stats for w in self.workers)])

    def counters(self) -> dict[str, int]:
        """Process-wide proxy counters summed over every worker."""
        out = dict(self.retired_counters)
        for w in self.workers:
            for k, v in w.counters.items():
                out[k] = out.get(k, 0) + v
        return out

    def instance_docs(self) -> dict[str, dict[str, Any]]:
        """Each instance's proxy state (router/proxy/balance.py), merged over the workers."""
        return merge_docs([w.instances for w in self.workers])

    def ejected_targets(self) -> dict[tuple[str, int], int]:
        """(host, port) -> how many workers eject that instance now (each worker has its own ejector)."""
        out: dict[tuple[str, int], int] = {}
        for w in self.workers:
            for host, port in w.ejected:
                out[(host, port)] = out.get((host, port), 0) + 1
        return out

    @property
    def listening(self) -> bool:
        """Every worker listens on the proxy ports (/health is 503 until then)."""
        return all(w.open for w in self.workers)

    def status(self) -> list[dict[str, Any]]:
        """For /api/status: what each worker last reported about itself."""
        return [{"pid": w.proc.pid, "alive": w.proc.poll() is None, "requests": w.requests, "routes": w.routes,
                 "listening": w.open} for w in self.workers]

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask every worker to stop (in-flight requests finish), then wait; kill stragglers."""
        self.stopping = True
        for w in self.workers:
            if not w.writer.is_closing():
                w.writer.write(_frame(("stop",)))
        deadline = time.monotonic() + timeout
        for w in self.workers:
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.proc.poll() is None:
                log.warning("proxy worker %d (pid %d) still running %.0fs after stop; killing it",
                            w.index, w.proc.pid, timeout)
                w.proc.kill()
                w.proc.wait()
            else:  # the exit code of each worker is visible in the log (tests/test_shutdown.py reads it)
                code = w.proc.returncode
                log.log(logging.INFO if code == 0 else logging.WARNING, "proxy worker %d (pid %d) exited with %s",
                        w.index, w.proc.pid, code)
            if w.reader_task is not None:
                w.reader_task.cancel()
            w.writer.close()


# --------------------------------------------------------------------------- worker process side


async def _worker(pipe: socket.socket) -> int:
    reader, writer = await asyncio.open_connection(sock=pipe)
    first = await _read(reader)
    if first is None or first[0] != "config":
        return 1
    cfg = first[1]
    logging.basicConfig(level=LEVELS[cfg["log.level"]], stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s")
    state = TableReplica(matcher=cfg["proxy.matcher"], glob_matching=not cfg["glob.matching.disabled"])
    proxy = build_proxy(cfg, state)  # type: ignore[arg-type]  # it reads `table` and `on_swap` only
    tune_gc()
    server = proxy_server(proxy, cfg, held=True)  # bound now, listening at the first table (module docstring)
    edge = Edge(cfg, state, reuse_port=True, held=True)  # type: ignore[arg-type]  # the TLS, TCP and gRPC listeners, in every worker too
    ready = asyncio.Event()  # a table, or the main process's "open"
    state.on_swap.append(lambda _services: ready.set())
    bound = asyncio.Event()  # every socket is bound: "open" is reported only once they all listen
    plain, others = edge.http_split()
    try:
        sockets = [listen_socket(cfg["proxy.addr"], reuse_port=True)] if plain else []
    except OSError as e:
        print(f"error: proxy worker: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    reported: list[Any] = [None]

    def report() -> None:
        routes = len(state.table) if state.table is not None else -1
        counters = proxy_counters(proxy)
        changed = proxy.stats.changed()
        ejected = [tuple(k) for k in proxy.ejector.ejected_targets()]
        edge_now = edgestats.snapshot(edge)
        if changed or [proxy.requests, routes, counters, ejected, edge_now] != reported[0]:
            reported[0] = [proxy.requests, routes, counters, ejected, edge_now]
            writer.write(_frame(("stats", os.getpid(), proxy.requests, None if routes < 0 else routes,
                                 {"routes": changed, "counters": counters, "ejected": ejected,
                                  "instances": proxy.ejector.instance_docs(), "edge": edge_now})))

    async def commands() -> None:
        while (msg := await _read(reader)) is not None:
            if msg[0] == "routes":
                state.apply(msg[1], msg[2], msg[3], msg[4])
                if msg[4]:
                    report()
            elif msg[0] == "noroute":
                proxy.noroute_html = msg[1]
            elif msg[0] == "open":
                ready.set()
            elif msg[0] == "stop":
                break
        server.should_exit = True  # told to stop, or the main process is gone

    async def reporter() -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(0.5)
            if tick % 120 == 0:  # once a minute: counters of targets that left the table
                proxy.stats.prune(state.table)
            report()

    def on_signal() -> None:  # SIGTERM: keep serving for proxy.shutdownwait, as the main process does
        loop.call_later(cfg["proxy.shutdownwait"], setattr, server, "should_exit", True)

    async def opener() -> None:
        await ready.wait()
        await bound.wait()
        if not server.should_exit:
            await server.open()
            edge.open()
            writer.write(_frame(("open", os.getpid())))
            log.debug("listening on the proxy ports (%s)", "routing table loaded" if state.table is not None
                      else "told to open without a table")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    tasks = [asyncio.create_task(commands()), asyncio.create_task(reporter()), asyncio.create_task(opener())]
    serving = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        return 1
    try:
        await edge.start()
        if others:
            await edge.start_http(server)
    except (ConfigError, CertError, OSError) as e:
        print(f"config error: proxy worker: {e}" if not isinstance(e, OSError) else f"error: proxy worker: {e}",
              file=sys.stderr)
        return 2
    writer.write(_frame(("bound", os.getpid())))
    bound.set()
    heap = start_trimmer()  # free heap back to the OS after connection bursts (router/run/heap.py)
    await serving
    if heap is not None:
        heap.stop()
    await edge.stop()
    for t in tasks:
        t.cancel()
    return 0


def main() -> int:
    pipe = socket.socket(fileno=int(sys.argv[1]))
    try:
        import uvloop

        return uvloop.run(_worker(pipe))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_worker(pipe))


if __name__ == "__main__":
    sys.exit(main())
