"""Traffic policies (issue 19) end to end, part 2: rate limits and sticky sessions, through a real router.

Rate limits are checked by counting what passed against the burst plus the rate times the span the
requests covered (never a timing threshold); sticky sessions by who served whom before and after an
instance left the table or died.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.backend_proc import BackendProc
from tests.policy_backends import PolicyBackend, policy_backend, raw_get
from tests.router_proc import RouterProc

b1 = policy_backend("b1")
b2 = policy_backend("b2")

# ------------------------------------------------------------------------------------------ rate limits


def _blast(port: int, path: str, seconds: float, threads: int, fresh: bool) -> tuple[int, list[str], float]:
    """Requests as fast as `threads` clients can send them for about `seconds`: (passed, Retry-After values
    of the 429s, seconds from the first request to the last answer)."""
    lock = threading.Lock()
    ok, retry, stamps = [0], [], []
    stop = time.monotonic() + seconds

    def run() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                break
            if fresh:
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            with lock:
                stamps.append(t0)
                stamps.append(time.monotonic())
                if r.status == 200:
                    ok[0] += 1
                else:
                    assert r.status == 429
                    retry.append(r.getheader("retry-after"))
        c.close()

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return ok[0], retry, max(stamps) - min(stamps)


@pytest.mark.parametrize("workers", [1, 2])
def test_rate_limit_holds_within_ten_percent(b1: PolicyBackend, workers: int) -> None:
    """Counted, not timed: what passed is the burst plus the rate times the span the requests covered."""
    rate, burst = 40, 20
    route = f'route add app /rl/ http://127.0.0.1:{b1.port}/ opts "ratelimit={rate}/s,burst={burst}"'
    with RouterProc.static(route, "-proxy.workers", str(workers)) as r:
        passed, retry, span = _blast(r.proxy_port, "/rl/x", 3.0, 8, fresh=workers > 1)
        expected = burst + rate * span
        assert abs(passed - expected) <= 0.1 * expected, (passed, expected, span)
        assert retry and set(retry) == {"1"}
        deadline = time.monotonic() + 15  # workers report their counters to the main process now and then
        while True:
            metrics = httpx.get(r.ui + "/metrics", timeout=5).text
            line = next(ln for ln in metrics.splitlines() if ln.startswith("consul_router_ratelimited_total "))
            if float(line.split()[-1]) == len(retry) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert float(line.split()[-1]) == len(retry)


def test_rate_limit_per_client_address(b1: PolicyBackend) -> None:
    route = f'route add app /rc/ http://127.0.0.1:{b1.port}/ opts "ratelimit=1/m,burst=2,per=client"'
    with RouterProc.static(route) as r:
        def get(src: str) -> tuple[int, str | None]:
            c = http.client.HTTPConnection("127.0.0.1", r.proxy_port, timeout=10, source_address=(src, 0))
            c.request("GET", "/rc/x")
            resp = c.getresponse()
            resp.read()
            c.close()
            return resp.status, resp.getheader("retry-after")
        assert [get("127.0.0.1")[0] for _ in range(2)] == [200, 200]
        assert get("127.0.0.1") == (429, "60")
        assert [get("127.0.0.2")[0] for _ in range(2)] == [200, 200]  # another client has its own bucket
        assert get("127.0.0.2")[0] == 429


# ------------------------------------------------------------------------------------------ sticky sessions


def _get_as(port: int, path: str, headers: dict[str, str]) -> tuple[str, str | None]:
    status, h, body = raw_get(port, path, headers)
    assert status == 200
    return body.decode().strip(), h.get("set-cookie")


def _wait_targets(r: RouterProc, n: int) -> None:
    deadline = time.monotonic() + 15
    while len(httpx.get(r.ui + "/api/routes", timeout=5).json()) != n:
        assert time.monotonic() < deadline, "the table did not change"
        time.sleep(0.1)


def test_sticky_cookie_keeps_the_instance_and_moves_only_its_clients(b1: PolicyBackend, b2: PolicyBackend,
                                                                      tmp_path) -> None:  # type: ignore[no-untyped-def]
    opts = 'opts "sticky=cookie,name=S,maxage=1h,secure"'
    lines = {name: f"route add app /s/ http://127.0.0.1:{b.port}/ {opts}" for name, b in (("b1", b1), ("b2", b2))}
    f = tmp_path / "routes.txt"
    f.write_text("\n".join(lines.values()) + "\n")
    with RouterProc("-registry.backend", "file", "-registry.file.path", str(f), "-proxy.strategy", "rr") as r:
        clients: dict[str, str] = {}  # backend -> that client's cookie
        for _ in range(2):  # round robin: the first two new clients get one instance each
            served, cookie = _get_as(r.proxy_port, "/s/x", {})
            assert cookie is not None and cookie.startswith("S=")
            assert "Path=/s/" in cookie and "Max-Age=3600" in cookie and "HttpOnly" in cookie
            assert "Secure" in cookie and "SameSite=Lax" in cookie
            clients[served] = cookie.split(";")[0]
        assert set(clients) == {"b1", "b2"}
        for name, cookie in clients.items():  # each keeps its instance, whatever round robin says
            for _ in range(6):
                assert _get_as(r.proxy_port, "/s/x", {"Cookie": f"a=1; {cookie}"}) == (name, None)
        f.write_text(lines["b2"] + "\n")  # b1 leaves the table
        _wait_targets(r, 1)
        served, cookie = _get_as(r.proxy_port, "/s/x", {"Cookie": clients["b1"]})
        assert served == "b2" and cookie is not None and cookie.split(";")[0] != clients["b1"]  # re-pinned
        assert _get_as(r.proxy_port, "/s/x", {"Cookie": clients["b2"]}) == ("b2", None)  # b2's client: unmoved
        metrics = httpx.get(r.ui + "/metrics", timeout=5).text
        values = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines()
                  if ln.startswith("consul_router_sticky")}
        assert values == {"consul_router_sticky_hits_total": 13.0, "consul_router_sticky_repins_total": 1.0}


@pytest.fixture(scope="module")
def procs() -> Iterator[tuple[BackendProc, BackendProc]]:
    """Backends in their own processes: 10,000 requests should not queue behind the test's own GIL."""
    a, b = BackendProc("b1").start(), BackendProc("b2").start()
    yield a, b
    a.stop()
    b.stop()


def test_sticky_hash_canary_gets_ten_percent_of_10000_clients(procs: tuple[BackendProc, BackendProc]) -> None:
    """fabio #202's sticky canary: a 10% canary by weight, consistent hashing on a header; each of 10,000
    distinct users lands on one instance and stays there, and the canary gets 10% +- 1% of them."""
    opts = 'opts "sticky=hash,header=X-User"'
    b1, b2 = procs
    routes = "\\n".join([f"route add stable /k/ http://127.0.0.1:{b1.port}/ {opts}",
                         f"route add canary /k/ http://127.0.0.1:{b2.port}/ {opts}",
                         "route weight canary /k/ weight 0.1"])
    with RouterProc.static(routes) as r:
        users = [f"user-{i}" for i in range(10_000)]
        first = _serve_users(r.proxy_port, users)
        canary = sum(1 for v in first.values() if v == "b2")
        assert 900 <= canary <= 1100, canary
        again = _serve_users(r.proxy_port, users[:1000])
        assert all(again[u] == first[u] for u in again)  # sticky


def _serve_users(port: int, users: list[str], threads: int = 4) -> dict[str, str]:
    out: dict[str, str] = {}

    def run(part: list[str]) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for u in part:
            c.request("GET", "/k/x", headers={"X-User": u})
            resp = c.getresponse()
            out[u] = resp.read().decode().strip()
        c.close()

    ts = [threading.Thread(target=run, args=(users[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out



def test_sticky_clients_of_a_dead_instance_move_and_only_they() -> None:
    """An instance that stops answering (killed: connects fail, it is retried elsewhere and ejected): its
    cookie clients are re-pinned and its hashed users spread over the others; everyone else stays put."""
    bs = [BackendProc(f"k{i}").start() for i in range(3)]
    try:
        lines = []
        for b in bs:
            lines.append(f'route add app /c/ http://127.0.0.1:{b.port}/ opts "sticky=cookie"')
            lines.append(f'route add app /h/ http://127.0.0.1:{b.port}/ opts "sticky=hash,header=X-User"')
        with RouterProc.static("\\n".join(lines), "-proxy.strategy", "rr") as r:
            cookies: dict[str, str] = {}
            for _ in range(3):
                served, cookie = _get_as(r.proxy_port, "/c/x", {})
                cookies[served] = cookie.split(";")[0]
            assert set(cookies) == {"k0", "k1", "k2"}
            users = [f"u{i}" for i in range(300)]
            before = {u: _get_as(r.proxy_port, "/h/x", {"X-User": u})[0] for u in users}
            assert set(before.values()) == {"k0", "k1", "k2"}
            bs[0].kill()
            served, cookie = _get_as(r.proxy_port, "/c/x", {"Cookie": cookies["k0"]})
            assert served in ("k1", "k2") and cookie is not None  # retried elsewhere and re-pinned there
            for name in ("k1", "k2"):
                assert _get_as(r.proxy_port, "/c/x", {"Cookie": cookies[name]}) == (name, None)
            after = {u: _get_as(r.proxy_port, "/h/x", {"X-User": u})[0] for u in users}
            moved = {u for u in users if after[u] != before[u]}
            assert moved == {u for u in users if before[u] == "k0"}
            assert {after[u] for u in moved} == {"k1", "k2"}
    finally:
        for b in bs:
            b.stop()

