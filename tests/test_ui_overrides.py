"""The override API and editor against the real router and a real Consul: CAS, per-line checks, paths, ro."""

from __future__ import annotations

import httpx
import pytest

from tests.consul_helpers import kv_put, make_client, wait_until
from tests.test_consul_routing import router_for, uid

pytestmark = pytest.mark.consul

JSON = {"Content-Type": "application/json"}


def kvpath_of(r) -> str:  # type: ignore[no-untyped-def]
    return r.flags[r.flags.index("-registry.consul.kvpath") + 1].strip("/")


def put(url: str, value: str, version: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.put(url, json={"value": value, "version": version}, headers=headers, timeout=5)


def test_create_update_and_conflicts(consul_agent) -> None:
    c = make_client(consul_agent.port)
    svc = f"ovr-{uid()}"
    with router_for(consul_agent) as r:
        key = kvpath_of(r)
        api = r.ui + "/api/manual"
        assert httpx.get(api).json() == {"value": "", "version": "0"}
        text = f"route add {svc} /ovr-{svc} http://127.0.0.1:5/\n"
        assert put(api, text, "0").status_code == 200
        doc = httpx.get(api).json()
        assert doc["value"] == text and int(doc["version"]) > 0
        assert c.kv.get(key)[1]["Value"].decode() == text
        # the router applies what was saved
        wait_until(lambda: any(x["service"] == svc for x in httpx.get(r.ui + "/api/routes").json()))
        # "create" again when the key exists is a conflict
        created = put(api, "route del x\n", "0")
        assert created.status_code == 409 and "version mismatch" in created.json()["error"]
        # a save on the current version works and moves the version on
        assert put(api, text + "route del x\n", doc["version"]).status_code == 200
        # the editor's now stale version is refused and nothing is written
        stale = put(api, "route del y\n", doc["version"])
        assert stale.status_code == 409
        assert c.kv.get(key)[1]["Value"].decode() == text + "route del x\n"


def test_bad_lines_are_refused_with_line_numbers(consul_agent) -> None:
    c = make_client(consul_agent.port)
    with router_for(consul_agent) as r:
        key = kvpath_of(r)
        kv_put(c, key, "route del keep\n")
        version = httpx.get(r.ui + "/api/manual").json()["version"]
        text = "route add a /a http://127.0.0.1:5/\nroute ad oops\n\nroute weight a /a weight lots\n"
        resp = put(r.ui + "/api/manual", text, version)
        assert resp.status_code == 400
        errors = resp.json()["errors"]
        assert [e["line"] for e in errors] == [2, 4]
        assert errors[0]["text"] == "route ad oops" and errors[0]["reason"]
        assert c.kv.get(key)[1]["Value"].decode() == "route del keep\n"  # nothing saved
        check = httpx.post(r.ui + "/api/check", json={"value": text}).json()
        assert [e["line"] for e in check["errors"]] == [2, 4]
        bad_json = httpx.put(r.ui + "/api/manual", content=b"{nope", headers=JSON)
        assert bad_json.status_code == 400


def test_paths_and_sub_keys(consul_agent) -> None:
    c = make_client(consul_agent.port)
    with router_for(consul_agent) as r:
        key = kvpath_of(r)
        assert httpx.get(r.ui + "/api/paths").json() == [""]
        kv_put(c, f"{key}/maint", "route del m\n")
        kv_put(c, key + "x/other", "route del not-ours\n")  # a sibling prefix is not under kvpath
        assert httpx.get(r.ui + "/api/paths").json() == ["", "/maint"]
        doc = httpx.get(r.ui + "/api/manual/maint").json()
        assert doc["value"] == "route del m\n"
        assert put(r.ui + "/api/manual/maint", "route del m2\n", doc["version"]).status_code == 200
        assert c.kv.get(f"{key}/maint")[1]["Value"].decode() == "route del m2\n"
        assert httpx.get(r.ui + "/api/manual/..%2Fescape").status_code in (400, 404)
        page = httpx.get(r.ui + "/manual")
        assert page.status_code == 200 and "/api/manual" in page.text


def test_read_only_ui_closes_the_override_endpoints(consul_agent) -> None:
    c = make_client(consul_agent.port)
    with router_for(consul_agent, "-ui.access", "ro") as r:
        key = kvpath_of(r)
        kv_put(c, key, "route del ro\n")
        for path in ("/api/paths", "/api/manual", "/api/manual/x", "/manual"):
            assert httpx.get(r.ui + path).status_code == 403, path
        assert put(r.ui + "/api/manual", "route del changed\n", "0").status_code == 403
        assert c.kv.get(key)[1]["Value"].decode() == "route del ro\n"
        assert httpx.get(r.ui + "/api/routes").status_code == 200  # reads of the table stay open
