"""/api/routes for the polling routes page: one JSON body per table, 304 while the table is unchanged."""

from __future__ import annotations

import asyncio
import warnings

from router.config.settings import load
from router.run.router import Router
from router.table.routecmd import parse

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we have and it works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def test_etag_revalidation_follows_table_swaps() -> None:
    router = Router(load(["-registry.backend", "static", "-registry.static.routes",
                          "route add a /a http://127.0.0.1:5/"]))
    asyncio.run(router.registry())
    with TestClient(router.ui) as client:
        first = client.get("/api/routes")
        assert first.status_code == 200 and [r["src"] for r in first.json()] == ["/a"]
        etag = first.headers["etag"]
        again = client.get("/api/routes", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        cmds, _ = parse("route add b /b http://127.0.0.1:6/")
        router.state.apply({}, cmds)  # the table is swapped for a new one
        changed = client.get("/api/routes", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert "/b" in [r["src"] for r in changed.json()]
        assert "route add b /b" in client.get("/api/routes?raw").text
