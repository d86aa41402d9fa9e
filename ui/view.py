"""What the admin UI reads of the running router. A Protocol, so ui/ depends on these few attributes and
not on router/run/ (which builds the UI and would otherwise be imported by it: a circle)."""

from __future__ import annotations

from typing import Any, Protocol

from registry.consul.api import ConsulAPI
from registry.consul.watcher import RegistryStatus
from router.config.settings import Config
from router.proxy.handler import ProxyApp
from router.table.state import RouterState


class RouterView(Protocol):
    cfg: Config
    state: RouterState  # the current table and its history
    status: RegistryStatus  # the registry's health, errors and sync age
    proxy: ProxyApp  # this process's proxy: counters, ejections
    api: ConsulAPI | None  # None unless registry.backend=consul
    workers: Any  # router/run/workers.py WorkerPool, or None with one process
    shutting_down: bool
    # router/run/edge.py Edge (listeners, TCP counters, certificates); read with getattr: optional
