"""One service's Consul entries -> its route commands, and what the UI shows about it.

The only stateful part is the hold for checks that have not run yet (health.py, `not_yet_run`): an
instance that was routed keeps its route for at most `unrun_hold` seconds while such a check is pending,
and the service is re-read when the hold ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.consul.health import UNRUN_HOLD, Verdict, judge_all
from registry.consul.status import RegistryStatus, ServiceStatus
from registry.tags import TagError, route_cmds
from router.table.routecmd import RouteCmd

log = logging.getLogger("registry.consul")


@dataclass(frozen=True, slots=True)
class Built:
    """One service's routes as built from its entries: what the table gets and what the UI shows."""

    cmds: list[RouteCmd] | None  # None: no route
    verdicts: list[Verdict]
    errors: list[TagError]
    tagged: bool  # an instance carries a route tag (else the UI does not list the service)


def build(entries: Sequence[dict[str, Any]], prefix: str, env: Mapping[str, str], statuses: tuple[str, ...],
          checks_all: bool, hold: Collection[str] = ()) -> Built:
    """One service's entries -> its route commands by fabio's health rules (pure: the startup load runs
    it in the dump helper process for every service, dump.py)."""
    verdicts = judge_all(entries, statuses, checks_all, hold)
    cmds: list[RouteCmd] = []
    errors: list[TagError] = []
    tagged = False
    for v in verdicts:
        if not tagged and any(t.startswith(prefix) for t in v.instance.tags):
            tagged = True
        if not v.healthy:
            continue
        c, e = route_cmds(v.instance, prefix, env)
        cmds += c
        if e:
            errors += e
    return Built(cmds or None, verdicts, errors, tagged)


class ServiceRoutes:
    """Builds route commands per service by fabio's health rules; `requeue(names)` is called when a hold ends."""

    def __init__(
        self,
        status: RegistryStatus,
        requeue: Callable[[set[str]], None],
        *,
        prefix: str = "urlprefix-",
        statuses: tuple[str, ...] = ("passing",),
        checks_all: bool = False,
        unrun_hold: float = UNRUN_HOLD,
    ) -> None:
        self.status = status
        self.requeue = requeue
        self.prefix = prefix
        self.statuses = statuses
        self.checks_all = checks_all
        self.unrun_hold = unrun_hold  # registry.consul.unrunhold; 0: an unrun check counts as failing at once
        self.env: dict[str, str] = {}  # `$DC` and friends for the tags (registry/tags.py)
        self._hold_started: dict[str, float] = {}  # service -> when its routed instances began waiting for unrun checks

    def _holdable(self, name: str) -> set[str]:
        """Instances of `name` routed now whose not-yet-run checks may still count as passing."""
        prev = self.status.services.get(name)
        started = self._hold_started.get(name)
        if prev is None or self.unrun_hold <= 0 or (started is not None and time.monotonic() - started >= self.unrun_hold):
            return set()
        return {v.instance.id for v in prev.verdicts if v.healthy}

    def _track_holds(self, name: str, verdicts: list[Verdict]) -> None:
        """A hold lasts `unrun_hold` at most: then the service is re-read and its unrun checks count as failing."""
        if not any(v.held for v in verdicts):
            self._hold_started.pop(name, None)
        elif name not in self._hold_started:
            self._hold_started[name] = time.monotonic()
            log.info("service %s: keeping routed instances whose checks have not run yet (agent restart?)", name)
            asyncio.get_running_loop().call_later(self.unrun_hold, self.requeue, {name})

    def commands(self, name: str, entries: list[dict[str, Any]]) -> list[RouteCmd] | None:
        """The service's route commands (None: no route), and its status for the UI."""
        return self.adopt(name, self.preview(name, entries))

    def preview(self, name: str, entries: list[dict[str, Any]]) -> Built:
        """What `commands` would build from `entries`, nothing kept (rereads.py decides whether to apply it)."""
        return build(entries, self.prefix, self.env, self.statuses, self.checks_all, self._holdable(name))

    def adopt(self, name: str, built: Built) -> list[RouteCmd] | None:
        """Keep a `preview` as the service's state (its holds and UI status); its commands."""
        self._track_holds(name, built.verdicts)
        return self.record(name, built)

    def record(self, name: str, built: Built) -> list[RouteCmd] | None:
        """Keep a built service's status for the UI, log its bad tags; its commands."""
        for e in built.errors:
            log.warning("route tag rejected: %s", e)
        if built.tagged:
            self.status.services[name] = ServiceStatus(name, built.verdicts, built.errors, len(built.cmds or ()), time.time())
        else:
            self.status.services.pop(name, None)
        return built.cmds

    def record_packed(self, name: str, cmds: list[RouteCmd] | None, verdicts: bytes, errors: list[TagError],
                      tagged: bool, counts: tuple[int, int]) -> list[RouteCmd] | None:
        """`record` for a service built in the helper process, its verdicts still packed (bulkload.py)."""
        for e in errors:
            log.warning("route tag rejected: %s", e)
        if tagged:
            self.status.services[name] = ServiceStatus(name, None, errors, len(cmds or ()), time.time(), packed=verdicts,
                                                       counts=counts)
        else:
            self.status.services.pop(name, None)
        return cmds
