"""router/listen/fastwrite.py: small writes of one loop pass leave as one, in order, and close flushes."""

from __future__ import annotations

import asyncio

from router.listen.fastwrite import DIRECT, _CoalescingTransport


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_small_writes_coalesce_big_ones_keep_order_and_close_flushes() -> None:
    async def main() -> FakeTransport:
        real = FakeTransport()
        t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"body")
        assert real.writes == []  # held until the loop pass ends
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        big = b"x" * DIRECT
        t.write(b"head")
        t.write(big)  # flushes what was held first, then goes straight through
        assert real.writes[1:] == [b"head", big]
        t.write(b"tail")
        t.close()
        assert real.writes[-1] == b"tail" and real.closed
        assert t.get_extra_info("peername") == "info:peername"  # everything else is delegated
        return real

    real = asyncio.run(main())
    assert len(real.writes) == 4
