"""Admin UI and API on ui.addr: what is routed, and why something is not.

It only reads: the router's current table, its last build errors and the registry's status. Pages are
self-contained (no assets from outside) so the UI works on an air-gapped host.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from router import __version__

if TYPE_CHECKING:
    from router.cli import Router


def _json(data: Any, request: Request) -> Response:
    indent = 2 if "pretty" in request.query_params else None
    return Response(json.dumps(data, indent=indent), media_type="application/json")


def status_doc(router: Router) -> dict[str, Any]:
    """The registry's and table's health, for /api/status and the status panel."""
    st = router.status
    table = router.state.table
    age = st.sync_age()
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - router.state.started, 1),
        "ready": router.state.ready,
        "shutting_down": router.shutting_down,
        "registry": {
            "backend": st.backend,
            "addr": st.addr,
            "datacenter": st.datacenter,
            "connected": st.connected,
            "last_sync": st.last_sync or None,
            "sync_age_seconds": None if age is None else round(age, 3),
            "indexes": dict(st.indexes),
            "requests": st.requests,
            "propagation": st.propagation_summary(),
            "error_count": st.error_count,
            "recent_errors": [{"at": t, "error": e} for t, e in list(st.errors)[-20:]],
        },
        "table": {
            "routes": len(table) if table is not None else 0,
            "last_builds": [
                {"at": s.at, "services": s.services, "manual": s.manual, "build_ms": round(s.build_ms, 3),
                 "routes": s.routes}
                for s in list(router.state.history)[-10:]
            ],
        },
        "errors": {
            "overrides": [str(e) for e in st.manual_errors],
            "table": [str(e) for e in router.state.errors],
            "tags": [str(e) for svc in st.services.values() for e in svc.tag_errors],
        },
    }


def services_doc(router: Router) -> list[dict[str, Any]]:
    """Every tagged service with each instance's verdict: the answer to "why is my service not routed"."""
    out = []
    for name in sorted(router.status.services):
        svc = router.status.services[name]
        out.append({
            "service": name,
            "routes": svc.routes,
            "instances": [
                {"id": v.instance.id, "node": v.instance.node, "address": f"{v.instance.address}:{v.instance.port}",
                 "tags": list(v.instance.tags), "routed": v.healthy, "reason": v.reason}
                for v in svc.verdicts
            ],
            "tag_errors": [str(e) for e in svc.tag_errors],
        })
    return out


def create_app(router: Router) -> Starlette:
    page = resources.files("ui").joinpath("routes.html").read_text(encoding="utf-8")

    async def root(request: Request) -> Response:
        return RedirectResponse("/routes", status_code=303)

    async def routes_page(request: Request) -> Response:
        title = router.cfg["ui.title"]
        html = page.replace("{{TITLE}}", ("consul-router - " + title) if title else "consul-router")
        return HTMLResponse(html.replace("{{VERSION}}", __version__))

    async def api_routes(request: Request) -> Response:
        table = router.state.table
        if "raw" in request.query_params:
            return PlainTextResponse(table.render() if table is not None else "")
        return _json(table.routes() if table is not None else [], request)

    async def api_status(request: Request) -> Response:
        return _json(status_doc(router), request)

    async def api_services(request: Request) -> Response:
        return _json(services_doc(router), request)

    async def api_config(request: Request) -> Response:
        return _json(router.cfg.redacted(), request)

    async def api_version(request: Request) -> Response:
        return PlainTextResponse(__version__ + "\n")

    async def health(request: Request) -> Response:
        if router.shutting_down:
            return PlainTextResponse("shutting down\n", status_code=503)
        if not router.state.ready:
            return PlainTextResponse("routing table not loaded yet\n", status_code=503)
        return PlainTextResponse("OK\n")

    return Starlette(routes=[
        Route("/", root),
        Route("/routes", routes_page),
        Route("/health", health),
        Route("/api/routes", api_routes),
        Route("/api/status", api_status),
        Route("/api/services", api_services),
        Route("/api/config", api_config),
        Route("/api/version", api_version),
    ])

