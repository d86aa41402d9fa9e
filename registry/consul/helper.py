"""The dump helper process: reads and decodes the instances of large catalogs away from the watcher.

Decoding 36 MB (30,000 instances) to 122 MB (100,000) of JSON and building every route from it took
seconds of CPU; on the watcher's event loop (which also swaps tables, and with one worker proxies) that
held every change and request meanwhile (issue 18). So, for large catalogs:

* the startup load runs in a helper process of its own, not niced (it is what readiness waits for),
  which reads Consul node by node itself and returns packed route commands (bulkload.py); it exits
  after, and the memory its decoding used goes with it;
* reconciles run in one long-lived helper, niced: its work is a background comparison, and on a small
  machine it must not take the CPU from the event loop or from Consul answering the next change.

Small catalogs are handled in the watcher: a few ms, less than starting a Python interpreter (~35 MB
RSS). When a helper cannot run, the watcher does the work itself (said so once).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from registry.consul import bulkload
from registry.consul.dump import Instances, summarize
from registry.consul.dumpfetch import ConsulTarget

log = logging.getLogger("registry.consul")

T = TypeVar("T")

# Below this size a dump is decoded in the watcher: a few ms (about 1,000 instances), less than handing
# the bytes over, and no helper process (a Python interpreter, ~35 MB RSS) is started for small catalogs.
IN_PROCESS_BYTES = 1 << 20


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def large_buffers_from_mmap(threshold: int = IN_PROCESS_BYTES) -> bool:
    """Make glibc serve allocations of `threshold` bytes or more with mmap, which returns them to the OS
    when freed. By default glibc raises that threshold to the largest block freed so far, so the dumps
    (3.7 MB at 3,000 instances, 36 MB at 30,000), read in the event loop and pickled for the helper in the
    queue's feeder thread, were served from per-thread heaps and fragmented them: the router's RSS grew by
    a few MB per dump (69 -> 85 MB over 30 dumps at 3,000 instances; 69 -> 74 MB with this). False where
    the C library is not glibc (nothing changes there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _spawn(nice: int = 0, initializer: Callable[[], object] | None = None) -> ProcessPoolExecutor:
    # spawn, not fork: the parent runs an event loop and threads that a fork would copy mid-state.
    if nice:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice,
                                   initargs=(nice,))
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=initializer)


def exit_without_teardown() -> None:
    """In the one-shot startup helper: end with `os._exit(0)` once the pool tells it to stop.

    Its heap holds the whole load's decoded objects (millions at 100,000 instances; bulkload keeps them
    until its answer is sent). A normal interpreter exit runs a full garbage collection over them and
    frees them one by one: 1-2 s of CPU on the shared machine, at the very moment the watcher builds its
    first table from the answer (the table build took 3.1-3.4 s instead of 0.9-1.0 s beside it). Nothing
    is left to flush: the answer went through the pool's pipe, the helper writes no files."""
    atexit.register(os._exit, 0)


class DumpDecoder:
    """The helper processes of one watcher; `broken` once one failed to run (then the watcher decodes)."""

    def __init__(self, in_process_bytes: int = IN_PROCESS_BYTES) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._broken = False
        self.in_process_bytes = in_process_bytes

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            large_buffers_from_mmap()
            self._pool = _spawn(nice=10)  # niced: see the module's docstring
        return self._pool

    def warm(self, size: int) -> asyncio.Future[int] | None:
        """Start the helper now (at startup) if dumps of `size` bytes will need it: its interpreter start
        (~0.3-1 s of CPU here) otherwise fell on the first change after startup (issue 18: "the first
        round after the background load up to 1.7 s")."""
        if self._broken or size < self.in_process_bytes or self._pool is not None:
            return None
        try:
            return asyncio.get_running_loop().run_in_executor(self._start(), os.getpid)
        except (OSError, RuntimeError) as e:
            log.warning("instance dump helper process failed to start (%s); decoding in the watcher", e)
            self._broken = True
            return None

    async def _in_helper(self, fn: Callable[..., T], *args: Any) -> T | None:
        """`fn(*args)` in the long-lived helper; None when it cannot run (from then on the watcher decodes)."""
        if self._broken:
            return None
        try:
            pool = self._start()
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except (BrokenProcessPool, OSError, RuntimeError) as e:
            log.warning("instance dump helper process failed (%s); decoding in the watcher from now on", e)
            self._broken = True
            self.close()
            return None

    async def summarize(self, raw: bytes, prefix: str) -> Instances:
        """A dump read by the watcher, reduced to what a reconcile compares."""
        if len(raw) >= self.in_process_bytes:
            got = await self._in_helper(summarize, raw, prefix)
            if got is not None:
                return got
        return summarize(raw, prefix)

    async def reconcile(self, target: ConsulTarget, prefix: str) -> tuple[Instances, bulkload.ReadStats] | None:
        """The helper reads every node itself and returns what a reconcile compares; None: it cannot run."""
        return await self._in_helper(bulkload.reconcile, target, prefix)

    async def load(self, target: ConsulTarget, prefix: str, env: dict[str, str], statuses: tuple[str, ...],
                   checks_all: bool) -> bulkload.Load | None:
        """The startup load in a helper process of its own (see the module's docstring); None: it cannot run."""
        if self._broken:
            return None
        large_buffers_from_mmap()
        try:
            pool = _spawn(initializer=exit_without_teardown)
        except (OSError, RuntimeError) as e:
            log.warning("instance dump helper process failed to start (%s); loading in the watcher", e)
            self._broken = True
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, bulkload.load, target, prefix, env,
                                                                    statuses, checks_all)
        except (BrokenProcessPool, OSError, RuntimeError) as e:
            log.warning("startup load helper process failed (%s); loading in the watcher", e)
            self._broken = True
            return None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
