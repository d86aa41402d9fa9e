"""Hot watches' slots (registry/consul/hot.py) with a fake Consul whose queries answer when a test says so:
an evicted watch's query is not abandoned at Consul (which would hold its connection until its wait ends)
but retires, a new service waits while every slot is taken, and a retiring service that changes again
goes on with the query it has."""

from __future__ import annotations

import asyncio
from typing import Any

from registry.consul.api import Response
from registry.consul.hot import HotWatches


class HeldAPI:
    """Every blocking query waits until `answer(name, index)`; `calls` records (name, index, wait)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float | None]] = []
        self.cancelled: list[str] = []
        self._held: dict[str, asyncio.Future[int]] = {}

    async def get(self, path: str, *, index: int | None = None, wait: float | None = None,
                  **kw: Any) -> Response:
        name = path.rsplit("/", 1)[-1]
        self.calls.append((name, index or 0, wait))
        fut = self._held[name] = asyncio.get_running_loop().create_future()
        try:
            returned = await fut
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        return Response(200, [{"Service": {"Service": name}}], returned, None)  # type: ignore[arg-type]

    def answer(self, name: str, index: int) -> None:
        self._held.pop(name).set_result(index)

    def queries(self, name: str) -> int:
        return sum(1 for n, _, _ in self.calls if n == name)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_evicted_watch_retires_with_its_query_and_a_new_service_waits_for_a_slot() -> None:
    async def run() -> None:
        api = HeldAPI()
        answers: list[tuple[str, int]] = []
        dropped: list[str] = []
        hot = HotWatches(api, lambda name, entries, index, at: answers.append((name, index)),  # type: ignore[arg-type]
                         limit=2, slots=3, wait=7.0, on_drop=dropped.append)
        for name, index in (("a", 10), ("b", 11), ("c", 12)):
            hot.touch(name, index)
            await settle()
        # c evicted a (the least recently changed): a's query is still out, so a retires and keeps its slot
        assert hot.names() == {"b", "c"} and hot.outstanding() == 3
        assert hot.watching("a") and api.cancelled == [] and dropped == []
        assert {w for _, _, w in api.calls} == {7.0}  # the hot watches' own wait, not registry.consul.wait
        hot.touch("d", 13)  # evicts b (retiring too), and every slot is taken: d waits
        await settle()
        assert hot.names() == {"c"} and hot.waiting() == ["d"] and hot.outstanding() == 3
        assert api.queries("d") == 0
        api.answer("a", 20)  # a's last answer: applied, then a asks no more and d gets its slot
        await settle()
        assert answers == [("a", 20)] and dropped == ["a"] and not hot.watching("a")
        assert api.queries("a") == 1
        assert hot.names() == {"c", "d"} and api.queries("d") == 1 and hot.outstanding() == 3
        hot.clear()
        await settle()
        assert set(api.cancelled) == {"b", "c", "d"}

    asyncio.run(run())


def test_a_retiring_service_that_changes_again_goes_on_with_the_query_it_has() -> None:
    async def run() -> None:
        api = HeldAPI()
        hot = HotWatches(api, lambda *a: None, limit=1, slots=2)  # type: ignore[arg-type]
        hot.touch("a", 10)
        await settle()
        hot.touch("b", 11)  # a retires
        await settle()
        assert hot.names() == {"b"} and hot.watching("a")
        hot.touch("a", 12)  # a changed again: its query still out goes on, b retires
        await settle()
        assert hot.names() == {"a"} and hot.watching("b") and api.queries("a") == 1
        api.answer("a", 13)  # a is kept going: it asks again, from the index answered
        await settle()
        assert api.queries("a") == 2 and api.calls[-1][:2] == ("a", 13)
        api.answer("b", 14)  # b's last answer: it asks no more
        await settle()
        assert api.queries("b") == 1 and not hot.watching("b")
        hot.clear()
        await settle()

    asyncio.run(run())


def test_a_watch_pacing_between_queries_is_cancelled_at_once_when_evicted() -> None:
    """Nothing of it is at Consul then, so it needs no slot: the new service starts at once."""

    class ErrAPI(HeldAPI):
        async def get(self, path: str, **kw: Any) -> Response:
            from registry.consul.api import ConsulError

            self.calls.append((path.rsplit("/", 1)[-1], kw.get("index") or 0, kw.get("wait")))
            raise ConsulError("refused")  # the watch backs off (sleeps), not parked at Consul

    async def run() -> None:
        api = ErrAPI()
        dropped: list[str] = []
        hot = HotWatches(api, lambda *a: None, limit=1, slots=1, on_drop=dropped.append)  # type: ignore[arg-type]
        hot.touch("a", 10)
        await settle()
        assert hot.parked("a") is None and hot.watching("a")
        hot.touch("b", 11)
        await settle()
        assert dropped == ["a"] and not hot.watching("a") and hot.names() == {"b"} and hot.outstanding() == 1
        hot.clear()
        await settle()

    asyncio.run(run())


def test_the_waiting_services_are_the_most_recently_changed_within_the_limit() -> None:
    async def run() -> None:
        api = HeldAPI()
        hot = HotWatches(api, lambda *a: None, limit=2, slots=2)  # type: ignore[arg-type]
        hot.touch("a", 1)
        hot.touch("b", 2)
        await settle()
        for i, name in enumerate("cdefg"):
            hot.touch(name, 3 + i)
            await settle()
        # c retired a (its query out) and found no slot; the rest found none either: the latest two wait
        assert hot.names() == {"b"} and hot.watching("a") and hot.outstanding() == 2
        assert hot.waiting() == ["f", "g"]
        api.answer("a", 50)
        await settle()
        assert hot.names() == {"b", "g"} and hot.waiting() == ["f"]  # the latest first
        hot.touch("h", 60)  # b retires for h, which waits: the slot b holds comes free with its answer
        await settle()
        assert hot.names() == {"g"} and hot.waiting() == ["f", "h"]
        api.answer("b", 61)
        await settle()
        assert hot.names() == {"g", "h"} and hot.waiting() == ["f"] and api.queries("b") == 1
        hot.clear()
        await settle()

    asyncio.run(run())
