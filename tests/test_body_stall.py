"""A request that cannot be sent twice whose instance sends the answer's headers and then no body
(router/proxy/attempts.py, "A body that does not start"; docs/reliability.md).

With a Content-Length and not one body byte for the stall time the client gets a whole 504 (its answer's
head had not been sent yet) instead of waiting for ever; a chunked answer that pauses as long (server-sent
events, a long poll) is never cut. Statuses and counts only: the chunked answer is held by its upstream
until the sized one has been answered, so it has certainly waited at least as long.
"""

from __future__ import annotations

import re
import socket
import threading

import httpx

from tests.raw_upstream import RawUpstream
from tests.router_proc import RouterProc


class HeadThenStall(RawUpstream):
    """A loopback upstream: `/sized` answers a head with Content-Length 100 and never a body byte;
    `/chunked` answers a chunked head, then its body once `release` is set; anything else is a small 200."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[str] = []
        super().__init__()

    def _serve(self, conn: socket.socket, n: int) -> None:
        data = b""
        while True:
            got = self.read_head(conn, data)
            if got is None:
                return
            head, data = got
            m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            need = int(m.group(1)) if m else 0
            while len(data) < need:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            data = data[need:]
            path = head.split(b" ")[1].decode()
            self.seen.append(path)
            if path.endswith("/sized"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n")
                self.release.wait(120)  # not one body byte
                return
            if path.endswith("/chunked"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                self.release.wait(120)
                conn.sendall(b"6\r\nevent\n\r\n0\r\n\r\n")
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")

    def close(self) -> None:
        self.release.set()
        super().close()


def _counter(router: RouterProc, name: str) -> float:
    text = httpx.get(router.ui + "/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^consul_router_{name}(?:_total)?(?:\{{[^}}]*\}})? (\S+)$",
                                                       text, re.M))


def test_a_post_whose_sized_body_never_starts_is_answered_504_and_a_paused_chunked_one_is_not_cut() -> None:
    up = HeadThenStall()
    try:
        with RouterProc.static(f"route add svc /b http://127.0.0.1:{up.port}/") as r:
            results: dict[str, tuple[int, bytes]] = {}

            def post(name: str) -> None:
                try:
                    resp = httpx.post(r.url + f"/b/{name}", content=b"payload", timeout=60)  # a hang guard
                    results[name] = (resp.status_code, resp.content)
                except httpx.HTTPError as e:
                    results[name] = (0, type(e).__name__.encode())

            chunked = threading.Thread(target=post, args=("chunked",))
            chunked.start()
            while "/b/chunked" not in up.seen:  # its head is out and its body paused before the sized one starts
                assert chunked.is_alive(), results
                threading.Event().wait(0.02)
            post("sized")
            assert results["sized"] == (504, b"upstream sent its headers, then no body\n")
            assert "chunked" not in results  # paused at least as long as the sized one waited, still open
            up.release.set()
            chunked.join(60)
            assert results["chunked"] == (200, b"event\n")
            assert up.seen.count("/b/sized") == 1  # a POST: sent once, never to another instance
            assert "sent headers, then no body for 1s" in r.output()
            assert httpx.get(r.url + "/b/other", timeout=60).status_code == 200  # the instance still serves
    finally:
        up.close()


def test_a_get_on_a_route_of_one_instance_is_bounded_the_same_way() -> None:
    """One instance: nowhere to retry a GET either, so the same rule ends it (counted as the instance's
    failure, an ejection candidate like any 504). A HEAD, whose answer has no body, is not touched."""
    up = HeadThenStall()
    try:
        with RouterProc.static(f"route add svc /b http://127.0.0.1:{up.port}/") as r:
            before = _counter(r, "upstream_retries")
            resp = httpx.get(r.url + "/b/sized", timeout=60)  # a hang guard
            assert (resp.status_code, resp.text) == (504, "upstream sent its headers, then no body\n")
            assert up.seen == ["/b/sized"] and _counter(r, "upstream_retries") == before
            head = httpx.head(r.url + "/b/sized", timeout=60)  # the same head answers a HEAD: no body is due
            assert head.status_code == 200 and head.headers["content-length"] == "100"
    finally:
        up.close()
