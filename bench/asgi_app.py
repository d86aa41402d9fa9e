"""The proxy core as a plain ASGI application, to measure it under other servers (granian, hypercorn,
uvicorn) beside our own listener: `bench/cpu_per_request.py --targets router,granian,hypercorn,...`.

The route is `route add b /bench $BENCH_BACKEND/` (default http://127.0.0.1:18080); the rest of the
configuration is the router's default, built by the same `build_proxy` the router uses
(router/run/assemble.py), so only the server in front differs.
"""

from __future__ import annotations

import os

from router.config.settings import load
from router.proxy.handler import ProxyApp
from router.run.assemble import build_proxy
from router.table.routecmd import parse
from router.table.state import RouterState


def make_app() -> ProxyApp:
    cfg = load(["-registry.backend", "static"])
    state = RouterState()
    cmds, errors = parse(f"route add b /bench {os.environ.get('BENCH_BACKEND', 'http://127.0.0.1:18080')}/", "static")
    assert not errors, errors
    state.apply({"b": cmds})
    return build_proxy(cfg, state)


app = make_app()
