"""router/run/heap.py: the trimmer trims only after RSS growth, once per growth (no timing involved)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from router.run.heap import HeapTrimmer, rss_bytes

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_trims_after_growth_and_not_again_without_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        t = HeapTrimmer(loop, interval=3600, growth=8 << 20)
        assert t.available
        assert not t.check()  # nothing grew since it started
        block = b"x" * (32 << 20)  # touched pages: RSS grows by 32 MB
        assert rss_bytes() - t.base >= 8 << 20
        assert t.check()
        assert t.trims == 1
        assert not t.check()  # the new base is the RSS after the trim
        assert t.trims == 1
        del block
    finally:
        loop.close()


@glibc
def test_start_and_stop_schedule_one_timer() -> None:
    loop = asyncio.new_event_loop()
    try:
        t = HeapTrimmer(loop, interval=3600).start()
        handle = t._handle
        assert handle is not None
        t.start()
        assert t._handle is handle  # started once
        t.stop()
        assert t._handle is None and handle.cancelled()
    finally:
        loop.close()
