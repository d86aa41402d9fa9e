"""Give glibc's free heap pages back to the OS after bursts of connections (issue 16, TLS churn).

Why: every TLS connection's uvloop SSL protocol allocates a 256 KiB read buffer (uvloop's
SSL_READ_MAX_SIZE) with malloc, and every SSL read first allocates 256 KiB for its result. glibc serves
the first ones with mmap but then raises its mmap threshold past 256 KiB (its dynamic threshold), so from
then on they all come from the heap: a burst of 500 concurrent TLS connections leaves ~150 MB of free
heap that glibc keeps (it returns only the top of a heap, and long-lived objects sit between), and RSS
stays at the burst's peak (bench/tls_churn.py: 55 -> 108 MB after one burst, docs/benchmarks.md).
Fixing the mmap threshold below 256 KiB would give those buffers back at close, but would cost an
mmap/mremap/munmap on every SSL read of every request. So: a timer checks the process's RSS every few
seconds (one read of /proc/self/statm, nothing on the request path) and calls `malloc_trim(0)`, which
releases the free pages inside the heaps, when RSS has grown by `growth` bytes since the last trim. At
most one trim per interval, and only after growth, so a steady process never trims.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Callable

log = logging.getLogger("router.heap")

INTERVAL = 5.0  # seconds between RSS checks
GROWTH = 16 << 20  # RSS growth since the last trim that triggers one
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm, second field, in pages)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _malloc_trim() -> Callable[[int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None  # musl and others: no malloc_trim, and no such per-heap caching to undo
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


class HeapTrimmer:
    """The timer of one process; `trims` counts the malloc_trim calls (for tests and the log)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL, growth: int = GROWTH) -> None:
        self.loop = loop
        self.interval = interval
        self.growth = growth
        self.trims = 0
        self._trim = _malloc_trim()
        self.base = rss_bytes()
        self._handle: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def start(self) -> HeapTrimmer:
        if self._trim is not None and self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def check(self) -> bool:
        """Trim if RSS grew by `growth` since the last trim (or start); whether it trimmed."""
        if self._trim is None:
            return False
        rss = rss_bytes()
        if rss < self.base:
            self.base = rss  # memory went back by itself: measure growth from here
            return False
        if rss - self.base < self.growth:
            return False
        self._trim(0)
        self.trims += 1
        self.base = rss_bytes()
        log.debug("malloc_trim: RSS %.1f -> %.1f MB", rss / 1e6, self.base / 1e6)
        return True

    def _tick(self) -> None:
        try:
            self.check()
        except OSError:  # no /proc: nothing to go by
            self._handle = None
            return
        self._handle = self.loop.call_later(self.interval, self._tick)


def start_trimmer(interval: float = INTERVAL, growth: int = GROWTH) -> HeapTrimmer | None:
    """Start this process's trimmer on the running loop; None where there is no glibc or /proc."""
    try:
        t = HeapTrimmer(asyncio.get_running_loop(), interval, growth)
    except OSError:
        return None
    return t.start() if t.available else None
