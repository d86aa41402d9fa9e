"""The override commands kept in Consul's KV store (`registry.consul.kvpath`): parsed, and reported when bad.

fabio reads route commands from KV as well as from tags; a bad line is rejected on its own (logged and shown
in the UI) and every other line keeps working.
"""

from __future__ import annotations

import logging
from typing import Any

from registry.consul.api import decode_kv
from registry.consul.status import RegistryStatus
from router.table.routecmd import LineError, RouteCmd, parse

log = logging.getLogger("registry.consul")


class Overrides:
    """Turns KV answers into override commands, remembering the last text so an unchanged answer is no swap."""

    def __init__(self, status: RegistryStatus) -> None:
        self.status = status
        self.text: list[tuple[str, str]] | None = None

    def reset(self) -> None:
        """Forget the last text: the next answer counts as new (a fresh initial sync)."""
        self.text = None

    def commands(self, r: Any) -> list[RouteCmd] | None:
        """Override commands from the KV answer; None when the text did not change."""
        items = decode_kv(r.body) if r.status == 200 else []
        if items == self.text:
            return None
        self.text = items
        cmds: list[RouteCmd] = []
        errors: list[LineError] = []
        for key, text in items:
            c, e = parse(text, source=f"kv:{key}")
            cmds.extend(c)
            errors.extend(e)
        self.status.manual_errors = errors
        for e in errors:
            log.warning("override rejected: %s", e)
        return cmds
