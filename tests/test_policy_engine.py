"""The proxy-side hooks (router/proxy/policies/engine.py) on real tables, without a network."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from router.proxy.balance import Balancer
from router.proxy.policies import sticky
from router.proxy.policies.engine import Policies
from router.table.builder import TableBuilder
from router.table.routecmd import parse


def table(text: str):  # type: ignore[no-untyped-def]
    cmds, errs = parse(text)
    assert not errs
    t, errors = TableBuilder().update({}, cmds)
    assert not errors
    return t


def scope(headers: dict[str, str] | None = None, client: str = "10.0.0.9") -> dict:
    return {"headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()], "client": (client, 1),
            "method": "GET"}


class Answers:
    """The one Exchange call the route hook makes (respond: its 429), recorded."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def respond(self, status: int, headers: list, body: bytes = b"") -> None:
        self.sent.append({"status": status, "headers": headers, "body": body})


async def _enter(p: Policies, t, path: str, s: dict):  # type: ignore[no-untyped-def]
    out = Answers()
    route = t.lookup("h", path)
    return await p.enter(route, t, s, "h", False, out), out.sent


def test_variant_default_and_fall_through() -> None:
    t = table("\n".join([
        'route add v2 /api http://10.0.0.2:80/ opts "match=X-Version=2"',
        "route add v1 /api http://10.0.0.1:80/",
        'route add only /m http://10.0.0.3:80/ opts "match=X-Beta"',
        "route add root / http://10.0.0.4:80/",
    ]))
    p = Policies()
    ctx, _ = asyncio.run(_enter(p, t, "/api/x", scope({"X-Version": "2"})))
    assert [x.service for x in ctx.route.targets] == ["v2"]
    ctx, _ = asyncio.run(_enter(p, t, "/api/x", scope({"X-Version": "1"})))
    assert [x.service for x in ctx.route.targets] == ["v1"]  # the default pool's own Route: only v1
    ctx, _ = asyncio.run(_enter(p, t, "/m/x", scope()))
    assert [x.service for x in ctx.route.targets] == ["root"]  # no default pool: the next shorter path


def test_rate_limit_answers_429_with_retry_after_and_counts() -> None:
    t = table('route add a /r http://10.0.0.1:80/ opts "ratelimit=1/h,burst=2"')
    p = Policies()
    statuses = []
    for _ in range(3):
        ctx, sent = asyncio.run(_enter(p, t, "/r", scope()))
        statuses.append(ctx.status)
    assert statuses == [0, 0, 429]
    assert sent[0]["status"] == 429 and (b"retry-after", b"3600") in sent[0]["headers"]
    assert p.counters.ratelimited == 1


def test_workers_divide_the_limit() -> None:
    t = table('route add a /r http://10.0.0.1:80/ opts "ratelimit=1/h,burst=4"')
    p = Policies(workers=2)
    assert [asyncio.run(_enter(p, t, "/r", scope()))[0].status for _ in range(3)] == [0, 0, 429]


def _picker(route):  # type: ignore[no-untyped-def]
    return Balancer("rr").picker(route)


def test_cookie_hit_repin_and_ejected_instance() -> None:
    t = table("\n".join(f'route add a /s http://10.0.0.{i}:80/ opts "sticky=cookie"' for i in (1, 2, 3)))
    p = Policies()
    s = scope()
    ctx, _ = asyncio.run(_enter(p, t, "/s", s))
    picker = _picker(ctx.route)
    i = p.sticky(ctx, picker, s, 0.0)
    first = picker.targets[i]
    headers, _ = p.response(ctx, first, s, 200, [])
    (cookie,) = [v for n, v in headers if n == b"set-cookie"]
    value = cookie.split(b";")[0].decode()
    assert value == f"router_sticky={sticky.target_id(first.service, first.url)}"

    s2 = scope({"Cookie": value})
    for _ in range(5):  # a hit: the same instance, no new cookie
        ctx, _ = asyncio.run(_enter(p, t, "/s", s2))
        assert picker.targets[p.sticky(ctx, picker, s2, 0.0)] is first
        assert not [h for h in p.response(ctx, first, s2, 200, [])[0] if h[0] == b"set-cookie"]
    assert p.counters.sticky_hits == 5

    picker.states[i].until = 100.0  # ejected until t=100
    ctx, _ = asyncio.run(_enter(p, t, "/s", s2))
    j = p.sticky(ctx, picker, s2, 1.0)
    assert j != i and p.counters.sticky_repins == 1
    headers, _ = p.response(ctx, picker.targets[j], s2, 200, [])
    assert [h for h in headers if h[0] == b"set-cookie"]  # re-pinned to the one that answered


def test_hash_skips_ejected_and_sets_no_cookie() -> None:
    t = table("\n".join(f'route add a /k http://10.0.0.{i}:80/ opts "sticky=hash,header=X-User"' for i in (1, 2, 3)))
    p = Policies()
    s = scope({"X-User": "alice"})
    ctx, _ = asyncio.run(_enter(p, t, "/k", s))
    picker = _picker(ctx.route)
    i = p.sticky(ctx, picker, s, 0.0)
    assert ctx.pin is None and not p.response(ctx, picker.targets[i], s, 200, [])[0]
    assert all(p.sticky(asyncio.run(_enter(p, t, "/k", s))[0], picker, s, 0.0) == i for _ in range(5))
    picker.states[i].until = 100.0
    assert p.sticky(asyncio.run(_enter(p, t, "/k", s))[0], picker, s, 1.0) != i
    # no header: the client address is hashed instead
    anon = scope(client="192.0.2.1")
    ctx, _ = asyncio.run(_enter(p, t, "/k", anon))
    assert p.sticky(ctx, picker, anon, 200.0) == p.sticky(asyncio.run(_enter(p, t, "/k", anon))[0], picker, anon,
                                                           200.0)


def test_response_header_edit_and_global_compression_vary() -> None:
    t = table('route add a /x http://10.0.0.1:80/ opts "resphdr.del=Server resphdr.add=X-A:1"')
    target = t.lookup("h", "/x").targets[0]
    p = Policies(gzip_types="^text/")
    headers, enc = p.response(None, target, scope({"Accept-Encoding": "gzip"}), 200,
                              [(b"server", b"x"), (b"content-type", b"text/plain"), (b"content-length", b"5000")])
    assert (b"server", b"x") not in headers and (b"x-a", b"1") in headers and (b"vary", b"Accept-Encoding") in headers
    assert enc is not None and enc.enc == "gzip"
    plain = SimpleNamespace(policy=None)
    headers, enc = p.response(None, plain, scope(), 200, [(b"content-type", b"text/plain")])
    assert enc is None and headers == [(b"content-type", b"text/plain"), (b"vary", b"Accept-Encoding")]


def test_sticky_instance_at_its_inflight_limit_yields_to_the_picker() -> None:
    t = table("\n".join(f'route add a /s http://10.0.0.{i}:80/ opts "sticky=hash"' for i in (1, 2)))
    p = Policies()
    s = scope()
    ctx, _ = asyncio.run(_enter(p, t, "/s", s))
    lb = Balancer("rr", max_inflight=1)
    picker = lb.picker(ctx.route)
    i = p.sticky(ctx, picker, s, 0.0)
    picker.states[i].outstanding = 1
    ctx, _ = asyncio.run(_enter(p, t, "/s", s))
    assert p.sticky(ctx, picker, s, 0.0) == 1 - i
