"""The override store: read, check and save the route-command text under `registry.consul.kvpath`.

Kept apart from the HTTP handlers so the rules (which key a sub-path means, when a save is a conflict,
what makes a line bad) are plain functions that unit tests can call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.consul.api import ConsulAPI
from router.table.routecmd import parse


class Conflict(Exception):
    """The stored text changed (or appeared, or vanished) since the editor read it."""


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason, "text": self.text}


def key_for(kvpath: str, sub: str) -> str:
    """`/fabio/config` + `/maint` -> `fabio/config/maint`; refuses paths that climb out of kvpath."""
    base = kvpath.strip("/")
    sub = sub.strip("/")
    if sub and any(part in ("", ".", "..") for part in sub.split("/")):
        raise ValueError(f"bad override path {sub!r}")
    return f"{base}/{sub}" if sub else base


def check(text: str, source: str = "") -> list[BadLine]:
    """Every line the router would skip, with its 1-based line number and why (nothing is saved)."""
    _, errors = parse(text, source)
    return [BadLine(e.line, e.reason, e.text) for e in errors]


def parse_version(raw: Any) -> int:
    """The editor's `version` (fabio sends the index as a JSON string) -> int; "" or 0 means "absent"."""
    if raw is None or raw == "":
        return 0
    if isinstance(raw, bool):
        raise ValueError("version must be a number")
    try:
        v = int(raw)
    except (TypeError, ValueError):
        raise ValueError("version must be a number") from None
    if v < 0:
        raise ValueError("version must not be negative")
    return v


async def read(api: ConsulAPI, key: str) -> tuple[str, int]:
    """The text under `key` ("" when absent) and its ModifyIndex (0 when absent)."""
    value, index = await api.kv_get(key)
    return value or "", index


async def save(api: ConsulAPI, key: str, value: str, version: int) -> None:
    """Write with Consul CAS: version 0 creates only if absent, else it must still be the stored index.

    fabio tries a create first and then a CAS; we take the version as the editor's statement of what it
    saw, so a key deleted since it was read is a conflict too rather than being silently recreated.
    """
    if not await api.kv_cas(key, value, version):
        raise Conflict("version mismatch: the overrides were changed since you loaded them; reload and retry")


async def paths(api: ConsulAPI, kvpath: str) -> list[str]:
    """Keys under kvpath with the prefix stripped, as fabio lists them (`["", "/maint"]`); "" always first."""
    base = kvpath.strip("/")
    r = await api.get(f"/v1/kv/{base}", params={"keys": ""})
    found = {""}
    for key in r.body or []:
        if key.endswith("/"):  # folder markers hold no commands
            continue
        if key == base:
            found.add("")
        elif key.startswith(base + "/"):
            found.add(key[len(base):])
    return sorted(found)
