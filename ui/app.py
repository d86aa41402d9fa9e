"""Admin UI and API on ui.addr: what is routed, and why something is not.

It reads the router's current table, its last build errors and the registry's status; the one thing it
writes is the override text in Consul KV, behind ui/security.py's gates. Pages are self-contained (no
assets from outside) so the UI works on an air-gapped host.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from registry.consul.api import ConsulError
from router import __version__
from router.config.values import ui_color_rgb
from router.proxy.stats import RateWindow
from ui import overrides
from ui.metrics import registry_for, route_snapshots
from ui.security import WriteGuard

if TYPE_CHECKING:
    from ui.view import RouterView


def _json(data: Any, request: Request) -> Response:
    indent = 2 if "pretty" in request.query_params else None
    return Response(json.dumps(data, indent=indent), media_type="application/json")


def status_doc(router: RouterView) -> dict[str, Any]:
    """The registry's and table's health, for /api/status and the status panel."""
    st = router.status
    table = router.state.table
    age = st.sync_age()
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - router.state.started, 1),
        "ready": router.state.ready,
        "shutting_down": router.shutting_down,
        "workers": router.workers.status() if getattr(router, "workers", None) else None,  # router/run/workers.py
        "listeners": router.edge.describe() if getattr(router, "edge", None) else [],  # router/run/edge.py
        "registry": {
            "backend": st.backend,
            "addr": st.addr,
            "datacenter": st.datacenter,
            "connected": st.connected,
            "last_sync": st.last_sync or None,
            "sync_age_seconds": None if age is None else round(age, 3),
            "indexes": dict(st.indexes),
            "requests": st.requests,
            "paced": st.paced,
            "failed_now": st.failed_now,  # failing checks applied before the hot watch's answer (rereads.py)
            "hot_watches": st.hot(),  # per-service watches of services changed lately (registry/consul/hot.py)
            "covered": st.covered,  # changes a hot watch brought without a re-read (registry/consul/rereads.py)
            "dumps": st.dumps,
            "propagation": st.propagation_summary(),
            "last_dump": dict(st.last_dump),
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


def services_doc(router: RouterView) -> list[dict[str, Any]]:
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


def proxy_states(router: RouterView) -> dict[str, dict[str, Any]]:
    """The proxy's view of each instance (healthy or ejected until when and why, latency estimate, in
    flight; router/proxy/balance.py), merged over the workers; None for an instance not routed yet."""
    pool = getattr(router, "workers", None)
    return pool.instance_docs() if pool is not None else router.proxy.ejector.instance_docs()


def service_doc(router: RouterView, name: str) -> dict[str, Any] | None:
    """One service: its instances' verdicts, its rows in the live table and, if it has none, why."""
    svc = router.status.services.get(name)
    table = router.state.table
    rows = [r for r in (table.routes() if table is not None else []) if r["service"] == name]
    if svc is None and not rows:
        return None
    doc: dict[str, Any] = {"service": name, "routes": rows, "instances": [], "tag_errors": [], "why_not_routed": []}
    if svc is not None:
        states = proxy_states(router)
        doc["instances"] = [
            {"id": v.instance.id, "node": v.instance.node, "address": f"{v.instance.address}:{v.instance.port}",
             "tags": list(v.instance.tags), "routed": v.healthy, "reason": v.reason,
             "proxy": states.get(f"service:{name}/{v.instance.id}|{v.instance.address}:{v.instance.port}")}
            for v in svc.verdicts
        ]
        doc["tag_errors"] = [str(e) for e in svc.tag_errors]
        why = doc["why_not_routed"]
        if not rows:
            if not svc.verdicts:
                why.append("no instances registered")
            elif not any(v.healthy for v in svc.verdicts):
                why.append("no instance may receive traffic: " + "; ".join(
                    f"{v.instance.id}: {v.reason}" for v in svc.verdicts))
            elif svc.routes == 0:
                why.append("no valid route tag" + (" (see the tag errors)" if svc.tag_errors else ""))
            else:
                why.append(f"its {svc.routes} route(s) are removed by an override (route del); see the overrides")
    return doc


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def nav_colors(color: str) -> tuple[str, str]:
    """CSS background and text colour of the nav bar for `ui.color`: dark text on light colours."""
    r, g, b = ui_color_rgb(color)
    light = 0.299 * r + 0.587 * g + 0.114 * b > 170
    return f"#{r:02x}{g:02x}{b:02x}", ("#212121" if light else "#ffffff")


def create_app(router: RouterView) -> Starlette:
    cfg = router.cfg
    title = html.escape(("consul-router - " + cfg["ui.title"]) if cfg["ui.title"] else "consul-router")
    nav_bg, nav_fg = nav_colors(cfg["ui.color"])
    fill = {"{{TITLE}}": title, "{{VERSION}}": __version__, "{{NAVBG}}": nav_bg, "{{NAVFG}}": nav_fg}

    def _page(name: str) -> str:
        """A page with title, version and nav colours filled in: fixed for the process, so done once."""
        text = resources.files("ui").joinpath(name).read_text(encoding="utf-8")
        for placeholder, value in fill.items():
            text = text.replace(placeholder, value)
        return text

    page, detail_page = _page("routes.html"), _page("service.html")
    manual_page, status_page = _page("manual.html"), _page("status.html")
    # ui.auth.loopback=false makes loopback writes need credentials too (a reverse proxy or port-forward on
    # this host makes every caller look like loopback)
    guard = WriteGuard(cfg["ui.access"], cfg["ui.auth.htpasswd"], cfg["ui.auth.token"], ui_host=cfg["ui.addr"][0],
                       trust_loopback=cfg["ui.auth.loopback"])
    kvpath = cfg["registry.consul.kvpath"]
    metrics_registry = registry_for(router)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    async def manual_editor(request: Request) -> Response:
        if (refused := guard.ro_refusal()) is not None:
            return refused
        return HTMLResponse(manual_page)

    def _key(request: Request) -> str:
        return overrides.key_for(kvpath, request.path_params.get("key", ""))

    async def api_paths(request: Request) -> Response:
        if (refused := guard.ro_refusal()) is not None:
            return refused
        if router.api is None:
            return _error(501, "overrides need registry.backend=consul")
        try:
            return _json(await overrides.paths(router.api, kvpath), request)
        except ConsulError as e:
            return _error(500, str(e))

    async def api_check(request: Request) -> Response:
        """Check override text without saving, so the editor can mark bad lines while one types."""
        if (refused := guard.ro_refusal()) is not None:
            return refused
        try:
            value = json.loads(await request.body())["value"]
            if not isinstance(value, str):
                raise TypeError("value must be a string")
        except (ValueError, KeyError, TypeError) as e:
            return _error(400, f"bad JSON: {e}")
        return _json({"errors": [b.as_dict() for b in overrides.check(value)]}, request)

    async def api_manual(request: Request) -> Response:
        if (refused := guard.ro_refusal()) is not None:
            return refused
        if router.api is None:
            return _error(501, "overrides need registry.backend=consul")
        try:
            key = _key(request)
        except ValueError as e:
            return _error(400, str(e))
        if request.method == "GET":
            try:
                value, version = await overrides.read(router.api, key)
            except ConsulError as e:
                return _error(500, str(e))
            return _json({"value": value, "version": str(version)}, request)
        if (refused := guard.write_refusal(request)) is not None:
            return refused
        try:
            body = json.loads(await request.body())
            value = body["value"]
            if not isinstance(value, str):
                raise TypeError("value must be a string")
            version = overrides.parse_version(body.get("version"))
        except (ValueError, KeyError, TypeError) as e:
            return _error(400, f"bad JSON: {e}")
        bad = overrides.check(value, f"kv:{key}")
        if bad:
            return Response(json.dumps({"errors": [b.as_dict() for b in bad]}), status_code=400,
                            media_type="application/json")
        try:
            await overrides.save(router.api, key, value, version)
        except overrides.Conflict as e:
            return _error(409, str(e))
        except ConsulError as e:
            return _error(500, str(e))
        return Response(status_code=200)

    async def root(request: Request) -> Response:
        return RedirectResponse("/routes", status_code=303)

    async def routes_page(request: Request) -> Response:
        return HTMLResponse(page)

    # rate1/pct99 of the routes page: the request counters' growth since a snapshot ~1 minute old
    window = RateWindow()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def tick() -> None:
            while True:
                window.tick(route_snapshots(router))
                await asyncio.sleep(5)

        ticker = asyncio.create_task(tick())
        yield
        ticker.cancel()

    def with_rates(rows: list[dict]) -> list[dict] | None:
        """The rows with rate1 (req/s) and pct99 (ms) filled in; None when no route saw traffic lately."""
        rates = window.rates(route_snapshots(router))
        if not rates:
            return None
        out = []
        for row in rows:
            rp = rates.get((row["service"], row["src"], row["dst"]))
            if rp is not None:
                row = {**row, "rate1": round(rp[0], 3), "pct99": round(rp[1], 3)}
            out.append(row)
        return out

    # The routes page polls; with 1,000+ routes and several viewers, build the JSON once per table and let
    # the browser revalidate with an ETag (304, no body) while the table is unchanged.
    routes_cache: dict[str, Any] = {"table": None, "etag": "", "body": b"[]", "gen": 0}

    async def api_routes(request: Request) -> Response:
        table = router.state.table
        if "raw" in request.query_params:
            return PlainTextResponse(table.render() if table is not None else "")
        if routes_cache["table"] is not table or not routes_cache["etag"]:
            routes_cache["gen"] += 1
            rows = table.routes() if table is not None else []
            routes_cache.update(table=table, etag=f'"t{routes_cache["gen"]}"', rows=rows,
                                body=json.dumps(rows).encode())
        live = with_rates(routes_cache["rows"])
        if "pretty" in request.query_params:
            return _json(routes_cache["rows"] if live is None else live, request)
        etag, body = routes_cache["etag"], routes_cache["body"]
        if live is not None:  # traffic: the rates change between polls, so the body is built each time
            body = json.dumps(live).encode()
            etag = f'"t{routes_cache["gen"]}-{hash(body) & 0xFFFFFFFF:x}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    async def api_healthy(request: Request) -> Response:
        """service -> [instances routed, instances registered], for the routes page's health column."""
        out = {name: [svc.healthy, svc.instances]  # counted at build time: no verdict is unpacked for this
               for name, svc in router.status.services.items()}
        return _json(out, request)

    async def api_status(request: Request) -> Response:
        return _json(status_doc(router), request)

    async def api_services(request: Request) -> Response:
        return _json(services_doc(router), request)

    async def api_service(request: Request) -> Response:
        doc = service_doc(router, request.path_params["name"])
        if doc is None:
            return _error(404, "no such tagged or routed service")
        return _json(doc, request)

    async def service_page(request: Request) -> Response:
        return HTMLResponse(detail_page)

    async def status_view(request: Request) -> Response:
        return HTMLResponse(status_page)

    async def api_config(request: Request) -> Response:
        return _json(router.cfg.redacted(), request)

    async def api_version(request: Request) -> Response:
        return PlainTextResponse(__version__ + "\n")

    async def health(request: Request) -> Response:
        if router.shutting_down:
            return PlainTextResponse("shutting down\n", status_code=503)
        if not router.state.ready:
            return PlainTextResponse("routing table not loaded yet\n", status_code=503)
        if not getattr(router, "listening", True):  # the table is in; the proxy listeners open a moment later
            return PlainTextResponse("proxy listeners not open yet\n", status_code=503)
        # Opt-in staleness check: the table is still served, but a balancer may prefer a router that
        # hears from Consul. The limit exceeds an idle blocking query's wait (checked in config).
        limit = router.cfg["ui.health.maxsyncage"]
        age = router.status.sync_age()
        if limit and router.status.backend == "consul" and (age is None or age > limit):
            return PlainTextResponse(f"last Consul answer {age or 0:.1f}s ago (limit {limit:g}s)\n", status_code=503)
        return PlainTextResponse("OK\n")

    return Starlette(lifespan=lifespan, routes=[
        Route("/", root),
        Route("/routes", routes_page),
        Route("/health", health),
        Route("/api/routes", api_routes),
        Route("/api/status", api_status),
        Route("/api/healthy", api_healthy),
        Route("/api/services", api_services),
        Route("/api/services/{name:path}", api_service),
        Route("/service", service_page),
        Route("/status", status_view),
        Route("/api/config", api_config),
        Route("/api/version", api_version),
        Route("/manual", manual_editor),
        Route("/metrics", metrics),
        Route("/api/paths", api_paths),
        Route("/api/check", api_check, methods=["POST"]),
        Route("/api/manual", api_manual, methods=["GET", "PUT"]),
        Route("/api/manual/{key:path}", api_manual, methods=["GET", "PUT"]),
    ])

