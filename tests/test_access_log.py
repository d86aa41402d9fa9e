"""log.access.target=stdout: common, combined and custom-template lines on the router's stdout."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from router.proxy.accesslog import compile_format
from tests.backends import Backend
from tests.router_proc import RouterProc


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("a").start()
    yield b
    b.stop()


def lines_matching(r: RouterProc, pattern: str, n: int = 1, timeout: float = 5.0) -> list[str]:
    """Wait for the batched writer (flushes within 100 ms) to put n matching lines out."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in r.output().splitlines() if re.search(pattern, line)]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def start(backend: Backend, *flags: str) -> RouterProc:
    routes = f"route add svc-a /a http://127.0.0.1:{backend.port}/"
    return RouterProc("-registry.backend", "static", "-registry.static.routes", routes,
                      "-log.access.target", "stdout", *flags)


def test_common_format(backend: Backend) -> None:
    with start(backend) as r:
        assert httpx.get(r.url + "/a/x?y=1").status_code == 200
        assert httpx.get(r.url + "/nowhere").status_code == 404
        ok = lines_matching(r, r'"GET /a/x\?y=1 HTTP/1.1"')
        assert len(ok) == 1
        assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                            r'"GET /a/x\?y=1 HTTP/1\.1" 200 2', ok[0]), ok[0]  # body "a\n"
        assert lines_matching(r, r'"GET /nowhere HTTP/1.1" 404 ')


def test_combined_format(backend: Backend) -> None:
    with start(backend, "-log.access.format", "combined") as r:
        httpx.get(r.url + "/a/", headers={"Referer": "http://ref/", "User-Agent": "tester/1"})
        line = lines_matching(r, r'"GET /a/ HTTP/1.1"')
        assert line and line[0].endswith('200 2 "http://ref/" "tester/1"'), line


def test_custom_template(backend: Backend) -> None:
    fmt = ("S=$response_status M=$request_method U=$request_uri UP=$upstream_addr SVC=$upstream_service "
           "UU=$upstream_request_uri H=$header.X-Trace T=$response_time_us")
    with start(backend, "-log.access.format", fmt) as r:
        for i in range(3):
            httpx.get(r.url + f"/a/p{i}", headers={"X-Trace": f"t{i}"})
        lines = lines_matching(r, r"^S=200 ", n=3)
        assert len(lines) == 3
        assert re.fullmatch(rf"S=200 M=GET U=/a/p0 UP=127\.0\.0\.1:{backend.port} SVC=svc-a UU=/a/p0 H=t0 T=\d+\.\d{{6}}",
                            lines[0]), lines[0]


def test_unknown_field_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"\$nope"):
        compile_format("$remote_addr $nope")
    assert len(compile_format("common")) > 5


def test_batches_keep_whole_lines_within_pipe_buf() -> None:
    """Workers share stdout: each write must hold whole lines and stay atomic on a pipe."""
    import select

    from router.proxy.accesslog import AccessLog

    writes: list[bytes] = []
    log = AccessLog("$request_uri", write=writes.append)
    log.lines = [f"/{i:03d}/" + "x" * 95 for i in range(100)]  # 100 lines of 101 bytes
    log.flush()
    assert len(writes) > 1 and all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes)
    assert b"".join(writes).decode().splitlines() == [f"/{i:03d}/" + "x" * 95 for i in range(100)]
    assert log.lines == []


def test_every_worker_logs(backend: Backend) -> None:
    with start(backend, "-proxy.workers", "2") as r:
        for i in range(30):
            assert httpx.get(f"{r.url}/a/w{i}", headers={"Connection": "close"}).status_code == 200
        lines = lines_matching(r, r'"GET /a/w\d+ HTTP/1.1" 200 2$', n=30)
        assert sorted(int(re.search(r"/a/w(\d+)", x).group(1)) for x in lines) == list(range(30))  # type: ignore[union-attr]


def test_websocket_gets_one_line_when_it_ends(backend: Backend) -> None:
    """An upgraded connection is logged once, when the tunnel closes: 101, bytes sent to the client."""
    import asyncio

    import aiohttp

    async def talk(url: str) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "a:hello"

    fmt = "S=$response_status M=$request_method U=$request_uri UP=$upstream_addr B=$response_body_size"
    with start(backend, "-log.access.format", fmt) as r:
        asyncio.run(talk(r.url.replace("http:", "ws:") + "/a/ws?q=1"))
        lines = lines_matching(r, r"^S=101 ")
        assert len(lines) == 1, r.output()
        m = re.fullmatch(rf"S=101 M=GET U=/a/ws\?q=1 UP=127\.0\.0\.1:{backend.port} B=(\d+)", lines[0])
        assert m and int(m.group(1)) > len("a:hello"), lines[0]  # the 101 head and the echoed frame
        assert httpx.get(r.url + "/nowhere-ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"}).status_code == 404
        assert lines_matching(r, r"^S=404 M=GET U=/nowhere-ws ")
