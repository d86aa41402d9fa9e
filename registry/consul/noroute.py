"""`registry.consul.noroutehtmlpath`: the body of the proxy's no-route answer, kept in Consul KV.

fabio watches the key as a prefix and concatenates the values of the key and its sub-keys (no
separator); an empty result means "no page", so the plain-text answer is used again. This watch is
independent of the route watch, so a page edit never rebuilds the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from registry.consul.api import Backoff, ConsulAPI, ConsulError, TokenBucket, decode_kv, next_index

log = logging.getLogger("registry.noroute")


async def watch_noroute(api: ConsulAPI, path: str, apply: Callable[[str], None], *, max_rate: float = 20.0) -> None:
    """Blocking KV watch on `path` (a prefix); calls `apply(html)` whenever the page text changes."""
    key = path.lstrip("/")
    index, current = 0, None
    backoff, bucket = Backoff(), TokenBucket(max_rate)
    while True:
        await bucket.take()
        try:
            r = await api.get(f"/v1/kv/{key}", index=index, params={"recurse": ""})
        except ConsulError as e:
            log.warning("no-route page %s: %s", path, e)
            await asyncio.sleep(backoff.next())
            continue
        backoff.reset()
        html = "" if r.status == 404 else "".join(v for _, v in decode_kv(r.body))
        if html != current:
            current = html
            apply(html)
            log.info("no-route page %s: %s", path, f"{len(html)} bytes" if html else "none (plain text answer)")
        index = next_index(index, r.index)
