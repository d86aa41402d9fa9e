"""router/run/heap.py: the trimmer trims once the heap's free bytes grew by `growth`, once per growth.

The policy is checked against a fake allocator (glibc's heap layout, and so its free bytes, depends on
everything the test process did before); glibc's own functions only for being found and callable."""

from __future__ import annotations

import asyncio
import platform

import pytest

from router.run.heap import HeapTrimmer, MallInfo2

MB = 1 << 20


class FakeHeap:
    def __init__(self, free: int, rss: int = 50 * MB) -> None:
        self.free = free
        self.rss_now = rss
        self.trims = 0

    def rss(self) -> int:
        return self.rss_now

    def info(self) -> MallInfo2:
        m = MallInfo2()
        m.fordblks = self.free
        return m

    def trim(self, pad: int) -> int:
        self.trims += 1
        self.free -= MB  # the top chunk goes back: a little less free in the arena
        self.rss_now = 50 * MB  # and the free chunks' pages
        return 1


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_trims_once_freed_bytes_grow_and_not_again_without_it(loop: asyncio.AbstractEventLoop) -> None:
    heap = FakeHeap(2 * MB)
    t = HeapTrimmer(loop, interval=3600, growth=16 * MB, fns=(heap.trim, heap.info), rss=heap.rss)
    assert not t.check() and heap.trims == 0  # nothing freed since start
    heap.free += 15 * MB
    assert not t.check() and heap.trims == 0  # less than `growth`
    heap.free += 2 * MB  # a burst of connections closed: 17 MB more free than at start
    assert t.check() and heap.trims == 1 and t.trims == 1
    assert t.base == heap.free  # counted from what was free after the trim
    assert not t.check() and heap.trims == 1  # still free, but already trimmed


def test_reused_free_memory_lowers_the_base(loop: asyncio.AbstractEventLoop) -> None:
    heap = FakeHeap(40 * MB)
    t = HeapTrimmer(loop, interval=3600, growth=16 * MB, fns=(heap.trim, heap.info), rss=heap.rss)
    heap.free = 5 * MB  # the next burst used the free chunks again
    assert not t.check()
    assert t.base == 5 * MB
    heap.free = 30 * MB  # ... and closed: 25 MB freed since, though less free than at start
    assert t.check() and heap.trims == 1


def test_start_and_stop_schedule_one_timer(loop: asyncio.AbstractEventLoop) -> None:
    heap = FakeHeap(0)
    t = HeapTrimmer(loop, interval=3600, fns=(heap.trim, heap.info), rss=heap.rss).start()
    handle = t._handle
    assert handle is not None
    t.start()
    assert t._handle is handle  # started once
    t.stop()
    assert t._handle is None and handle.cancelled()


def test_a_burst_between_two_checks_is_seen_by_rss(loop: asyncio.AbstractEventLoop) -> None:
    heap = FakeHeap(300 * MB)  # after an earlier trim: free chunks whose pages went back
    t = HeapTrimmer(loop, interval=3600, growth=16 * MB, fns=(heap.trim, heap.info), rss=heap.rss)
    heap.rss_now = 60 * MB  # some growth, not enough
    assert not t.check()
    heap.rss_now = 135 * MB  # 1,000 connections reused those chunks and closed before this check
    assert t.check() and heap.trims == 1
    assert t.rss_base == 50 * MB
    assert not t.check()  # no growth since the trim


def test_rss_growth_with_nothing_free_is_not_trimmed(loop: asyncio.AbstractEventLoop) -> None:
    heap = FakeHeap(2 * MB)
    t = HeapTrimmer(loop, interval=3600, growth=16 * MB, fns=(heap.trim, heap.info), rss=heap.rss)
    heap.rss_now, heap.free = 150 * MB, 4 * MB  # connections still open: the memory is in use
    assert not t.check() and heap.trims == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallinfo2 are glibc's")
def test_glibc_functions_are_found(loop: asyncio.AbstractEventLoop) -> None:
    t = HeapTrimmer(loop, interval=3600, growth=1)
    assert t.available
    assert t.free_bytes() > 0
    t.base = 0
    assert t.check()  # calls the real malloc_trim(0)
    assert t.trims == 1
