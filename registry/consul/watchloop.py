"""One blocking-query loop per watched endpoint, with Consul's documented index rules (consul-api.md A1).

Each loop keeps its index, paces answers without news (pacing.py), backs off on errors while the router
keeps its last routes, and resets every other loop when an index goes backwards (Consul's data was
replaced: the others may be parked on indexes it will not reach for a while).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from registry.consul.api import Backoff, ConsulAPI, ConsulError, Response, next_index
from registry.consul.pacing import WatchPacer
from registry.consul.status import RegistryStatus

log = logging.getLogger("registry.consul")

# An answer: the response and whether it brought a higher index than the loop had ("news").
Handler = Callable[[Response, bool], None]


class WatchLoops:
    """The watch loops of one watcher. `on_error` runs after a failed read, `on_backwards` after an index
    went backwards (both: forget per-service indexes; the latter also asks for a full instance compare)."""

    def __init__(self, api: ConsulAPI, status: RegistryStatus, max_rate: float, *,
                 on_error: Callable[[], None], on_backwards: Callable[[], None]) -> None:
        self.api = api
        self.status = status
        self.max_rate = max_rate
        self.on_error = on_error
        self.on_backwards = on_backwards
        self.answered_at = 0.0  # monotonic time of the latest watch answer
        self._names: set[str] = set()  # the watches running
        self._reset: set[str] = set()  # watches told to abandon their blocking read and restart at 0
        self._waiting: dict[str, asyncio.Task[Any]] = {}  # watch -> its task, while it waits for an answer

    async def run(self, name: str, path: str, index: int, handle: Handler,
                  params: dict[str, str] | None = None) -> None:
        """Watch `path` from `index` forever, handing every answer to `handle`."""
        pacer = WatchPacer(self.max_rate, time.monotonic(), index)
        backoff = Backoff()
        probe = False
        delay = 0.0
        self._names.add(name)
        while True:
            if delay > 0:  # only after an answer without news (registry/consul/pacing.py)
                await asyncio.sleep(delay)
                delay = 0.0
            try:
                # After an error the agent may have restarted with other data, and a blocking read on an
                # index it has not reached would just wait: ask without an index once to compare.
                r = await self._get_unless(name, path, None if probe else index, params)
                probe = False
                if r is None:  # another watch saw Consul's data replaced: start over from index 0
                    index = 0
                    # a read cut short is an answer without news: paced like one, or watches that keep
                    # resetting each other (an index stuck at 0) would re-read without any wait
                    delay = pacer.quiet.take(time.monotonic())
                    continue
            except ConsulError as e:
                probe = True
                self.status.requests += 1
                self.on_error()  # the agent may come back with other data
                delay = backoff.next()
                self.status.error(f"{name} watch: {e}")
                log.warning("%s watch failed (%s); keeping the last routes, retrying in %.1fs", name, e, delay)
                await asyncio.sleep(delay)
                continue
            self.status.requests += 1
            backoff.reset()
            self.status.synced()
            delay = pacer.after(r.index, time.monotonic())
            if delay > 0:
                self.status.paced += 1
            news = r.index > index
            new = next_index(index, r.index)
            if new == 0:
                log.warning("%s watch: index went backwards (%d -> %d); re-reading everything", name, index, r.index)
                self.on_backwards()
                for other in self._names - {name}:
                    self._reset.add(other)
                    task = self._waiting.get(other)
                    if task is not None:
                        task.cancel()
            self.answered_at = time.monotonic()
            self.status.indexes[name] = r.index
            index = new
            handle(r, news)

    async def _get_unless(self, name: str, path: str, index: int | None, params: dict[str, str] | None) -> Any:
        """A blocking read that is abandoned (None) when another watch resets this one (before or while it waits).

        The read runs in the watch's own task, and a reset cancels that task's wait: a task per read plus a
        task waiting on a reset event, joined by `asyncio.wait`, cost three more event-loop turns between an
        answer's arrival and its handling, each behind everything else ready at that moment (issue 18)."""
        if name in self._reset:
            self._reset.discard(name)
            return None
        task = asyncio.current_task()
        assert task is not None
        self._waiting[name] = task
        try:
            return await self.api.get(path, index=index, params=params)
        except asyncio.CancelledError:
            if name in self._reset and task.uncancel() == 0:  # our reset, not the watcher being stopped
                self._reset.discard(name)
                return None
            raise
        finally:
            self._waiting.pop(name, None)
