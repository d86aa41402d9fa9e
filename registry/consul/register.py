"""`registry.consul.register.*`: the router registers itself in Consul, as fabio does.

One registration per name: the main one (`register.name`, default `fabio`) plus one per `register=<name>`
route option found in the table (aliases). Each has the ID `<name>-<hostname>-<port>` and two checks: a
TTL check `<id>-ttl` (15 s, deregistered after 1 min critical) that we keep passing every 10 s, and an
HTTP check on the UI's `/health`, which turns critical when we start shutting down. Every 10 s the
agent's service list is read and a missing registration (agent restart, someone deregistered us) is put
back. Aliases that drop out of the table are deregistered; everything is deregistered on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from registry.consul.api import ConsulAPI, ConsulError

log = logging.getLogger("registry.register")

TTL = "15s"
TTL_DEREGISTER_AFTER = "1m"


@dataclass(frozen=True)
class Registration:
    name: str
    addr: str  # host:port of the UI (its /health is checked)
    tags: tuple[str, ...] = ()
    check_interval: str = "1s"
    check_timeout: str = "3s"
    check_tls_skip_verify: bool = False
    check_scheme: str = "http"

    @property
    def ip(self) -> str:
        host = self.addr.rpartition(":")[0].strip("[]")
        if host and host not in ("0.0.0.0", "::"):
            return host
        try:  # fabio takes the first global unicast address; the host's name is the portable equivalent
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.addr.rpartition(":")[2])

    @property
    def service_id(self) -> str:
        return f"{self.name}-{socket.gethostname()}-{self.port}"

    def body(self) -> dict:
        ip = self.ip
        host = f"[{ip}]" if ":" in ip else ip
        return {
            "ID": self.service_id,
            "Name": self.name,
            "Address": ip,
            "Port": self.port,
            "Tags": list(self.tags),
            "Checks": [
                {"CheckID": self.service_id + "-ttl", "Name": f"{self.name} TTL", "TTL": TTL,
                 "DeregisterCriticalServiceAfter": TTL_DEREGISTER_AFTER},
                {"Name": f"{self.name} /health", "HTTP": f"{self.check_scheme}://{host}:{self.port}/health",
                 "Interval": self.check_interval, "Timeout": self.check_timeout,
                 "TLSSkipVerify": self.check_tls_skip_verify},
            ],
        }


def aliases(targets: Iterable) -> set[str]:
    """The `register=<name>` option values of a table's targets."""
    return {t.opts["register"] for t in targets if t.opts and t.opts.get("register")}


class Registrar:
    """Keeps this router's registrations in the agent until :meth:`deregister_all`."""

    def __init__(self, api: ConsulAPI, main: Registration, *, alias_source: Callable[[], set[str]] | None = None,
                 interval: float = 10.0) -> None:
        self.api = api
        self.main = main
        self.alias_source = alias_source or set
        self.interval = interval
        self.active: dict[str, Registration] = {}

    def wanted(self) -> dict[str, Registration]:
        names = {self.main.name} | set(self.alias_source())
        return {n: (self.main if n == self.main.name else _renamed(self.main, n)) for n in sorted(names)}

    async def sync(self) -> None:
        """One round: register what is wanted and missing, refresh TTLs, deregister dropped aliases."""
        try:
            present = set((await self.api.get("/v1/agent/services")).body or {})
        except ConsulError as e:
            log.warning("self-registration: cannot list agent services: %s", e)
            return
        wanted = self.wanted()
        for name, reg in wanted.items():
            try:
                if reg.service_id not in present:
                    await self.api.put("/v1/agent/service/register", reg.body())
                    log.info("registered %s in Consul as %s", name, reg.service_id)
                await self.api.put(f"/v1/agent/check/update/{reg.service_id}-ttl", {"Status": "passing"})
                self.active[name] = reg
            except ConsulError as e:
                log.warning("self-registration of %s: %s", name, e)
        for name in [n for n in self.active if n not in wanted]:
            await self._deregister(self.active.pop(name))

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.interval)

    async def _deregister(self, reg: Registration) -> None:
        try:
            await self.api.put(f"/v1/agent/service/deregister/{reg.service_id}")
            log.info("deregistered %s from Consul", reg.service_id)
        except ConsulError as e:
            log.warning("deregistration of %s: %s", reg.service_id, e)

    async def deregister_all(self) -> None:
        for reg in list(self.active.values()):
            with contextlib.suppress(Exception):
                await self._deregister(reg)
        self.active.clear()


def _renamed(reg: Registration, name: str) -> Registration:
    return Registration(name, reg.addr, reg.tags, reg.check_interval, reg.check_timeout, reg.check_tls_skip_verify,
                        reg.check_scheme)
