"""`registry.consul.noroutehtmlpath`: the body of the proxy's no-route answer, kept in Consul KV.

fabio watches the key as a prefix and concatenates the values of the key and its sub-keys (no
separator); an empty result means "no page", so the plain-text answer is used again. This watch is
independent of the route watch, so a page edit never rebuilds the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from registry.consul.api import Backoff, ConsulAPI, ConsulError, decode_kv, next_index
from registry.consul.pacing import WatchPacer

log = logging.getLogger("registry.noroute")


async def watch_noroute(api: ConsulAPI, path: str, apply: Callable[[str], None], *, max_rate: float = 20.0) -> None:
    """Blocking KV watch on `path` (a prefix); calls `apply(html)` whenever the page text changes."""
    key = path.lstrip("/")
    index, current = 0, None
    backoff, pacer, delay = Backoff(), WatchPacer(max_rate, time.monotonic()), 0.0
    while True:
        if delay > 0:  # only after an answer without news (registry/consul/pacing.py)
            await asyncio.sleep(delay)
            delay = 0.0
        try:
            r = await api.get(f"/v1/kv/{key}", index=index, params={"recurse": ""})
        except ConsulError as e:
            log.warning("no-route page %s: %s", path, e)
            await asyncio.sleep(backoff.next())
            continue
        backoff.reset()
        delay = pacer.after(r.index, time.monotonic())
        html = "" if r.status == 404 else "".join(v for _, v in decode_kv(r.body))
        if html != current:
            current = html
            apply(html)
            log.info("no-route page %s: %s", path, f"{len(html)} bytes" if html else "none (plain text answer)")
        index = next_index(index, r.index)
