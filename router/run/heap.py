"""Give glibc's free heap pages back to the OS after bursts of connections (issue 16, TLS churn).

Why: every TLS connection's uvloop SSL protocol allocates a 256 KiB read buffer (uvloop's
SSL_READ_MAX_SIZE) with malloc, and every SSL read first allocates 256 KiB for its result. glibc serves
the first ones with mmap but then raises its mmap threshold past 256 KiB (its dynamic threshold), so from
then on they all come from the heap: a burst of 500 concurrent TLS connections leaves ~150 MB of free
heap that glibc keeps (it returns only the top of a heap, and long-lived objects sit between), and RSS
stays at the burst's peak (bench/tls_churn.py: 55 -> 108 MB after one burst, docs/benchmarks.md).
Fixing the mmap threshold below 256 KiB would give those buffers back at close, but would cost an
mmap/mremap/munmap on every SSL read of every request. So: a timer, every few seconds, reads the
process's RSS (/proc/self/statm) and how many bytes glibc's heaps hold free (mallinfo2, no syscall;
0.3-0.9 ms on the router's heap after bursts of 1,000 connections), and calls `malloc_trim(0)`, which
releases the free pages inside the heaps, when `growth` bytes more are free than after the last trim
(a burst of connections has closed: RSS does not move then, only when they come), or when RSS grew by
`growth` since the last trim and at least that much is free (a burst that came and went between two
checks). Nothing runs per request or per connection; a steady process never trims.
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

INTERVAL = 5.0  # seconds between checks of the free heap bytes
GROWTH = 16 << 20  # more free heap bytes than at the last trim that trigger one
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm, second field, in pages); 0 without /proc."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h); `fordblks`: bytes in free chunks."""

    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> tuple[Callable[[int], int], Callable[[], MallInfo2]] | None:
    """(malloc_trim, mallinfo2), or None: not glibc (musl has neither, nor this caching), or glibc < 2.33."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, info = libc.malloc_trim, libc.mallinfo2
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    info.argtypes, info.restype = [], MallInfo2
    return trim, info


class HeapTrimmer:
    """The timer of one process; `trims` counts the malloc_trim calls (for tests and the log)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL, growth: int = GROWTH,
                 fns: tuple[Callable[[int], int], Callable[[], MallInfo2]] | None = None,
                 rss: Callable[[], int] | None = None) -> None:
        """`fns`: (malloc_trim, mallinfo2), glibc's by default; `rss`: rss_bytes (tests give others)."""
        self.loop = loop
        self.interval = interval
        self.growth = growth
        self.trims = 0
        fns = fns or _glibc()
        self._trim, self._info = fns if fns is not None else (None, None)
        self._rss = rss or rss_bytes
        self.base = self.free_bytes()  # heap bytes free at start or after the last trim (or less, since)
        self.rss_base = self._rss()  # RSS at start or after the last trim (or less, since)
        self._handle: asyncio.TimerHandle | None = None

    def free_bytes(self) -> int:
        """Bytes free inside glibc's heaps (kept by it, resident or already released)."""
        return self._info().fordblks if self._info is not None else 0

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
        """Trim if `growth` more bytes are free in the heaps than at the last trim (a burst of connections
        closed, seen across checks), or if RSS grew by `growth` since the last trim while at least that
        much is free (a burst that came and went between two checks); whether it trimmed."""
        if self._trim is None:
            return False
        free, rss = self.free_bytes(), self._rss()
        if free < self.base:
            self.base = free  # freed memory was used again: count what is freed from here
        if rss < self.rss_base:
            self.rss_base = rss
        if free - self.base < self.growth and (rss - self.rss_base < self.growth or free < self.growth):
            return False
        self._trim(0)
        self.trims += 1
        self.base, self.rss_base = self.free_bytes(), self._rss()
        log.debug("malloc_trim: %.1f MB free in the heap, RSS %.1f -> %.1f MB", free / 1e6, rss / 1e6,
                  self.rss_base / 1e6)
        return True

    def _tick(self) -> None:
        self.check()
        self._handle = self.loop.call_later(self.interval, self._tick)


def start_trimmer(interval: float = INTERVAL, growth: int = GROWTH) -> HeapTrimmer | None:
    """Start this process's trimmer on the running loop; None where there is no glibc (2.33 or later)."""
    t = HeapTrimmer(asyncio.get_running_loop(), interval, growth)
    return t.start() if t.available else None
