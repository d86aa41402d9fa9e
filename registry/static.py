"""Route sources without Consul: `registry.backend=static` (inline text) and `file` (a watched file).

Both feed the router the same way the Consul watcher does, as override commands, so the table code
has one input path. The file source re-reads the file when its modification time or size changes.
"""

from __future__ import annotations

import asyncio
import logging
import os

from registry.consul.watcher import RegistryStatus, Sink
from router.table.routecmd import parse

log = logging.getLogger("registry.static")


def load_text(text: str, source: str, sink: Sink, status: RegistryStatus) -> None:
    cmds, errors = parse(text.replace("\\n", "\n"), source=source)
    status.manual_errors = errors
    for e in errors:
        log.warning("route rejected: %s", e)
    sink({}, cmds)
    status.synced()
    status.ready = True


async def watch_file(path: str, sink: Sink, status: RegistryStatus, interval: float = 1.0) -> None:
    """Load `path` and reload it whenever it changes; a missing or unreadable file keeps the last routes."""
    last: tuple[float, int] | None = None
    while True:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime, st.st_size)
            if stamp != last:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                last = stamp
                load_text(text, f"file:{path}", sink, status)
                log.info("loaded routes from %s", path)
        except OSError as e:
            status.error(f"cannot read {path}: {e.strerror}")
        await asyncio.sleep(interval)
