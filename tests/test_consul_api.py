"""Unit tests of our Consul HTTP client code (respx): index rules, rate limit, errors, KV decoding."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
import respx

from registry.consul.api import (
    Backoff,
    ConsulAPI,
    ConsulError,
    consul_base_url,
    decode_kv,
    next_index,
)


@pytest.mark.parametrize(
    ("prev", "returned", "expected"),
    [(0, 10, 10), (10, 10, 10), (10, 12, 12), (100, 5, 0), (5, 0, 0), (0, 0, 1), (1, 0, 0)],
)
def test_next_index_rules(prev: int, returned: int, expected: int) -> None:
    """Backwards -> 0 (re-read now); otherwise never below 1, so an index of 0 cannot make the loop spin."""
    assert next_index(prev, returned) == expected


def test_index_zero_twice_in_a_row_still_blocks() -> None:
    idx = next_index(0, 0)
    assert idx == 1
    assert next_index(idx, 1) == 1


@pytest.mark.parametrize(
    ("addr", "url"),
    [
        ("localhost:8500", "http://localhost:8500"),
        ("http://10.0.0.1:8500", "http://10.0.0.1:8500"),
        ("https://consul:8501/ignored/path", "https://consul:8501"),
    ],
)
def test_base_url(addr: str, url: str) -> None:
    assert consul_base_url(addr) == url


def test_backoff_is_capped_and_resets() -> None:
    b = Backoff(first=0.1, cap=5.0)
    delays = [b.next() for _ in range(12)]
    assert max(delays) <= 5.0 * 1.2 and delays[0] < 0.2
    b.reset()
    assert b.next() < 0.2


def test_read_timeout_exceeds_consul_jitter() -> None:
    assert ConsulAPI.read_timeout(60) > 60 * 17 / 16


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.new_event_loop().run_until_complete(coro)


def mocked(addr: str, *args, **kw) -> ConsulAPI:  # type: ignore[no-untyped-def]
    """A client whose requests go through httpx, where respx answers them. With its default transport the
    client sends its GETs straight through registry/consul/transport.py (no httpx client layer): the
    URL, query and headers checked here are built by the same code for both (`ConsulAPI.url`)."""
    return ConsulAPI(addr, *args, transport=httpx.AsyncHTTPTransport(), **kw)


@respx.mock(using="httpx")
def test_blocking_get_sends_index_wait_consistency_and_token(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.route(method="GET", host="c", port=8500, path="/v1/health/state/any").mock(
        return_value=httpx.Response(200, json=[], headers={"X-Consul-Index": "42"})
    )
    api = mocked("c:8500", "tok", consistency="consistent", wait=30)
    r = run(api.get("/v1/health/state/any", index=7))
    req = route.calls.last.request
    assert r.index == 42 and r.body == []
    assert req.url.params["index"] == "7" and req.url.params["wait"] == "30000ms"
    assert "consistent" in req.url.params
    assert req.headers["x-consul-token"] == "tok"


@respx.mock(using="httpx")
def test_index_header_is_case_insensitive_and_404_is_returned(respx_mock: respx.MockRouter) -> None:
    respx_mock.get("http://c:8500/v1/kv/x").mock(return_value=httpx.Response(404, headers={"x-consul-index": "3"}))
    r = run(mocked("c:8500").get("/v1/kv/x"))
    assert (r.status, r.index, r.body) == (404, 3, None)


@respx.mock(using="httpx")
def test_errors_raise_consul_error_with_context(respx_mock: respx.MockRouter) -> None:
    respx_mock.get("http://c:8500/v1/catalog/services").mock(return_value=httpx.Response(500, text="No cluster leader"))
    with pytest.raises(ConsulError, match="HTTP 500: No cluster leader"):
        run(mocked("c:8500").get("/v1/catalog/services"))
    respx_mock.get("http://c:8500/v1/agent/self").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ConsulError, match="ConnectError"):
        run(mocked("c:8500").get("/v1/agent/self"))


def test_decode_kv_skips_folders_and_decodes() -> None:
    items = [
        {"Key": "fabio/config/", "Value": None},
        {"Key": "fabio/config/a", "Value": base64.b64encode(b"route del x").decode()},
        {"Key": "fabio/config/b", "Value": None},
    ]
    assert decode_kv(items) == [("fabio/config/a", "route del x"), ("fabio/config/b", "")]
