"""Run a real Consul agent on free loopback ports for integration tests.

    agent = ConsulAgent()            # `consul agent -dev`: in memory, state lost on restart
    agent = ConsulAgent(data_dir=d)  # single non-dev server (-bootstrap-expect=1) that keeps its data
    agent = ConsulAgent(data_dir=d, join=server)  # a client agent (no -server) joined to `server`'s LAN pool
    agent.start()                    # blocks until the agent has a leader and serves the catalog
    agent.http_url                   # "http://127.0.0.1:PORT"
    agent.pause(); agent.resume()    # SIGSTOP / SIGCONT
    agent.kill()                     # SIGKILL (outage tests)
    agent.restart()                  # start again on the same ports
    agent.stop()                     # SIGTERM, SIGKILL after 10 s

The binary is $CONSUL if set, else whatever scripts/get-consul.sh prints.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
GET_CONSUL = REPO_ROOT / "scripts" / "get-consul.sh"
HOST = "127.0.0.1"

_binary_cache: str | None = None
_help_cache: dict[str, str] = {}
_live_agents: weakref.WeakSet[ConsulAgent] = weakref.WeakSet()
_node_seq = itertools.count(1)


class ConsulAgentError(RuntimeError):
    pass


def consul_binary() -> str:
    """$CONSUL if set, else the path printed by scripts/get-consul.sh (which may download it)."""
    global _binary_cache
    env = os.environ.get("CONSUL")
    if env:
        path = env if os.sep in env else shutil.which(env)
        if not path or not os.access(path, os.X_OK):
            raise ConsulAgentError(f"CONSUL={env!r} is not an executable file")
        return os.path.abspath(path)
    if _binary_cache is None:
        try:
            out = subprocess.run(
                [str(GET_CONSUL)], check=True, stdout=subprocess.PIPE, text=True, timeout=600
            ).stdout.strip()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            raise ConsulAgentError(f"{GET_CONSUL} failed to provide a consul binary: {e}") from e
        if not out or not os.access(out, os.X_OK):
            raise ConsulAgentError(f"{GET_CONSUL} printed {out!r}, which is not an executable")
        _binary_cache = out
    return _binary_cache


def _agent_help(binary: str) -> str:
    if binary not in _help_cache:
        p = subprocess.run([binary, "agent", "-h"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=30)
        _help_cache[binary] = p.stdout
    return _help_cache[binary]


PORT_RANGE = (20000, 32000)


def free_ports(n: int, udp_too: int = 0) -> list[int]:
    """n distinct free loopback TCP ports; the first `udp_too` of them are also free for UDP.

    All sockets stay bound until every port is chosen, so the ports are distinct. Another process may still
    take one before the agent binds it; ConsulAgent.start() retries with new ports in that case.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            # below the kernel's ephemeral range (32768+ here), so no outgoing connection of another
            # process can take the port between our check and the agent's bind, or across a restart
            port = random.randrange(PORT_RANGE[0], PORT_RANGE[1])
            if port in ports:
                continue
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                t.bind((HOST, port))
            except OSError:
                t.close()
                continue
            held.append(t)
            if len(ports) < udp_too:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    u.bind((HOST, port))
                except OSError:
                    u.close()
                    continue  # UDP side busy: keep the TCP socket held (so it isn't picked again), try another
                held.append(u)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _header(headers: httpx.Headers, name: str) -> str | None:
    # httpx.Headers is case-insensitive already; Consul sends e.g. "X-Consul-Knownleader".
    return headers.get(name)


class ConsulAgent:
    """One consul agent process on 127.0.0.1 with its own free ports."""

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        node: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        ready_timeout: float = 30.0,
        join: ConsulAgent | None = None,
    ) -> None:
        if join is not None and data_dir is None:
            raise ValueError("a client agent needs a data_dir")
        self.join = join
        self.binary = binary or consul_binary()
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.node = node or f"test-{os.getpid()}-{next(_node_seq)}-{uuid.uuid4().hex[:6]}"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="consul-agent-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "consul.log"
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0
        self._started_once = False
        self._pick_ports()
        _live_agents.add(self)

    # ---- addresses -------------------------------------------------------------------------------------

    def _pick_ports(self) -> None:
        serf_lan, serf_wan, http, server = free_ports(4, udp_too=2)
        self.ports = {"http": http, "serf_lan": serf_lan, "serf_wan": serf_wan, "server": server}

    @property
    def port(self) -> int:
        return self.ports["http"]

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.addr}"

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) agent process, None if never started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def mode(self) -> str:
        return "dev" if self.data_dir is None else "client" if self.join is not None else "server"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- command line ----------------------------------------------------------------------------------

    def command(self) -> list[str]:
        p = self.ports
        cmd = [self.binary, "agent"]
        if self.data_dir is None:
            cmd.append("-dev")
        elif self.join is not None:  # the machine's local agent, as routers run next to one in production
            cmd += [f"-data-dir={self.data_dir}", f"-retry-join={HOST}:{self.join.ports['serf_lan']}",
                    "-retry-interval=1s"]
        else:
            cmd += ["-server", "-bootstrap-expect=1", f"-data-dir={self.data_dir}",
                    "-hcl", "performance { raft_multiplier = 1 }"]
        cmd += [
            f"-bind={HOST}",
            f"-client={HOST}",
            f"-http-port={p['http']}",
            "-dns-port=-1",
            f"-serf-lan-port={p['serf_lan']}",
            f"-serf-wan-port={p['serf_wan']}",
            f"-server-port={p['server']}",
            "-grpc-port=-1",
        ]
        if "-grpc-tls-port" in _agent_help(self.binary):
            cmd.append("-grpc-tls-port=-1")
        cmd += [f"-node={self.node}", "-log-level=warn", "-hcl", "disable_update_check = true"]
        cmd += self.extra_args
        return cmd

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> ConsulAgent:
        """Launch the agent and wait until it is ready. Retries with new ports if one was taken meanwhile
        (only before the first successful start: restart() keeps the ports)."""
        if self.is_running():
            raise ConsulAgentError(f"consul agent already running (pid {self.pid})")
        attempts = 5 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._launch()
                self._wait_ready(self.ready_timeout if timeout is None else timeout)
            except ConsulAgentError:
                if attempt + 1 < attempts and "address already in use" in self._log_since_launch().lower():
                    self._terminate()
                    if self._started_once:
                        time.sleep(0.5)  # restart() keeps its ports: wait for the old sockets to go
                    else:
                        self._pick_ports()
                    continue
                self._terminate()
                raise
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C in pytest must not reach the agent before the fixture stops it
            )
        self._paused = False

    def _wait_ready(self, timeout: float) -> None:
        """Ready = GET /v1/catalog/nodes is 200 with X-Consul-KnownLeader: true and X-Consul-Index >= 2
        (what Consul's sdk/testutil WaitForLeader checks), and GET /v1/catalog/services is 200."""
        deadline = time.monotonic() + timeout
        last = "no response yet"
        with httpx.Client(base_url=self.http_url, timeout=1.0, trust_env=False) as client:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    code = self._proc.returncode if self._proc else None
                    raise ConsulAgentError(
                        f"consul agent exited with code {code} before becoming ready\n"
                        f"command: {' '.join(self.command())}\n--- log tail ({self.log_path}) ---\n"
                        f"{self.log_tail()}"
                    )
                try:
                    r = client.get("/v1/catalog/nodes")
                    leader = (_header(r.headers, "X-Consul-KnownLeader") or "").lower()
                    index = int(_header(r.headers, "X-Consul-Index") or 0)
                    if r.status_code == 200 and leader == "true" and index >= 2:
                        if client.get("/v1/catalog/services").status_code == 200:
                            return
                        last = "catalog/services not 200"
                    else:
                        last = f"catalog/nodes: HTTP {r.status_code}, KnownLeader={leader!r}, Index={index}"
                except (httpx.HTTPError, ValueError) as e:
                    last = f"{type(e).__name__}: {e}"
                if time.monotonic() > deadline:
                    raise ConsulAgentError(
                        f"consul agent ({self.mode}, pid {self.pid}, {self.http_url}) not ready after "
                        f"{timeout:g}s; last: {last}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. No-op if not running."""
        self._terminate(timeout)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
            if self._paused:  # a stopped process only handles SIGTERM once continued
                os.kill(proc.pid, signal.SIGCONT)
        self._paused = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL the agent at once (simulates a crash) and reap it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the process freezes; connections are accepted by the kernel but never answered."""
        self._require_running()
        os.kill(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._require_running()
        os.kill(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        self._paused = False

    def restart(self, timeout: float | None = None) -> ConsulAgent:
        """Stop (if running) and start again on the same ports. A -dev agent comes back empty."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        """Stop, and remove the work dir if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _require_running(self) -> None:
        if not self.is_running():
            raise ConsulAgentError("consul agent is not running")

    # ---- diagnostics -----------------------------------------------------------------------------------

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-max_bytes:].decode(errors="replace")

    def _log_since_launch(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ConsulAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.is_running() else "stopped")
        return f"<ConsulAgent {self.mode} {self.addr} pid={self.pid} {state}>"


@atexit.register
def _kill_leftovers() -> None:
    # Agents run in their own session, so nothing else kills them if a test run dies without teardown.
    for agent in list(_live_agents):
        with contextlib.suppress(Exception):
            agent.stop(timeout=3)
