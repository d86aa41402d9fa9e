"""Registrator compatibility on a real Consul: services registered the way gliderlabs/registrator registers
them are routed the way fabio routes them.

What Registrator's consul adapter sends (bridge.newService + consul.Register/buildCheck) for a container
`demo_1` publishing port 80 on host `host1`:

- ID `host1:demo_1:80` (hostname:container-name:exposed-port), Name from SERVICE_NAME (else the image name);
- Address = the host IP (`-ip`, or the published binding's IP) with `-internal=false`, the container IP with
  `-internal`; it can be "" (no `-ip` and nothing to resolve, or a host-network container under
  `-internal`), and Consul then answers with `Service.Address: ""`, meaning "use the node's address";
- Tags = SERVICE_TAGS split on unescaped commas (`\\,` keeps a comma), no trimming;
- SERVICE_CHECK_HTTP=/health -> an HTTP check `http://<Address>:<Port>/health` every SERVICE_CHECK_INTERVAL
  (default 10s), run by the Consul agent itself.

These tests send that payload through the agent API and run a real HTTP check against a real backend.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.backends import Backend
from tests.consul_helpers import uid, wait_until
from tests.router_proc import RouterProc

pytestmark = pytest.mark.consul



def registrator_tags(service_tags: str) -> list[str]:
    """SERVICE_TAGS -> Consul tags as Registrator splits them: on commas not preceded by a backslash."""
    tags, cur, i = [], "", 0
    while i < len(service_tags):
        ch = service_tags[i]
        if ch == "\\" and service_tags[i + 1 : i + 2] == ",":
            cur += ","
            i += 2
            continue
        if ch == ",":
            if cur:
                tags.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if cur:
        tags.append(cur)
    return tags


def registrator_payload(
    host: str, container: str, exposed_port: int, port: int, env: dict[str, str], address: str = ""
) -> dict[str, Any]:
    """The AgentServiceRegistration Registrator builds for one published port of one container."""
    meta = {k[len("SERVICE_"):].lower(): v for k, v in env.items() if k.startswith("SERVICE_")}
    payload: dict[str, Any] = {
        "ID": f"{host}:{container}:{exposed_port}",
        "Name": meta.get("name", container),
        "Port": port,
        "Tags": registrator_tags(meta.get("tags", "")),
        "Address": address,
    }
    if "check_http" in meta:
        # Registrator interpolates its own service.IP; with an empty one the agent would dial ":port", so for
        # the check we use the node address the agent (and the router) fall back to.
        payload["Check"] = {
            "HTTP": f"http://{address or '127.0.0.1'}:{port}{meta['check_http']}",
            "Interval": meta.get("check_interval", "10s"),
            "Timeout": meta.get("check_timeout", "2s"),
        }
    return payload


class Agent:
    """Raw agent API, as Registrator (Go's consul/api) calls it."""

    def __init__(self, http_url: str) -> None:
        self.http = httpx.Client(base_url=http_url, timeout=10, trust_env=False)

    def register(self, payload: dict[str, Any]) -> None:
        r = self.http.put("/v1/agent/service/register", json=payload)
        assert r.status_code == 200, r.text

    def deregister(self, service_id: str) -> None:
        r = self.http.put(f"/v1/agent/service/deregister/{service_id}")
        assert r.status_code == 200, r.text

    def health(self, name: str) -> list[dict[str, Any]]:
        return self.http.get(f"/v1/health/service/{name}").json()

    def check_status(self, service_id: str) -> str:
        for entry in self.http.get("/v1/agent/checks").json().values():
            if entry["ServiceID"] == service_id:
                return entry["Status"]
        return ""



def routes_of(r: RouterProc, svc: str) -> list[dict[str, Any]]:
    return [x for x in httpx.get(r.ui + "/api/routes", timeout=5).json() if x["service"] == svc]


@pytest.mark.parametrize("address", ["", "127.0.0.1"], ids=["empty-address", "ip-flag"])
def test_registrator_services_are_routed(consul_agent, backends, address: str) -> None:
    """Two containers of one service, SERVICE_TAGS with two routes and a plain tag, SERVICE_CHECK_HTTP."""
    agent = Agent(consul_agent.http_url)
    svc, path, host = f"demo-{uid()}", f"/demo-{uid()}", f"demo-{uid()}.example"
    b1, b2 = Backend("d1").start(), Backend("d2").start()
    backends.extend([b1, b2])
    env = {
        "SERVICE_NAME": svc,
        "SERVICE_TAGS": f"urlprefix-{path} strip={path},urlprefix-{host}/,team\\,a",
        "SERVICE_CHECK_HTTP": "/health",
        "SERVICE_CHECK_INTERVAL": "1s",
    }
    ids = []
    for i, b in enumerate((b1, b2), start=1):
        p = registrator_payload("host1", f"{svc}_{i}", 80, b.port, env, address=address)
        assert p["Tags"] == [f"urlprefix-{path} strip={path}", f"urlprefix-{host}/", "team,a"]
        agent.register(p)
        ids.append(p["ID"])
    assert ids == [f"host1:{svc}_1:80", f"host1:{svc}_2:80"]

    # Consul says what Registrator's registration looks like from the router's side.
    entries = agent.health(svc)
    assert {e["Service"]["Address"] for e in entries} == {address}
    assert {e["Node"]["Address"] for e in entries} == {"127.0.0.1"}

    with RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath", f"/t-{uid()}/config",
                    "-proxy.strategy", "rr") as r:
        # The agent's own HTTP check has to pass before anything is routed.
        wait_until(lambda: len(routes_of(r, svc)) == 4, timeout=15, message=lambda: str(routes_of(r, svc)))
        assert all(agent.check_status(i) == "passing" for i in ids)
        assert any(s.path == "/health" for s in b1.requests), "the HTTP check never reached the backend"
        assert any("Consul" in s.headers.get("user-agent", "") for s in b1.requests if s.path == "/health")

        rows = routes_of(r, svc)
        assert {(x["host"], x["dst"]) for x in rows} >= {
            ("", f"http://127.0.0.1:{b1.port}/"), ("", f"http://127.0.0.1:{b2.port}/")}
        raw = httpx.get(r.ui + "/api/routes?raw", timeout=5).text
        for b in (b1, b2):
            assert f'route add {svc} {path} http://127.0.0.1:{b.port}/ tags "team,a" opts "strip={path}"' in raw
            assert f'route add {svc} {host}/ http://127.0.0.1:{b.port}/ tags "team,a"' in raw

        for b in (b1, b2):
            b.requests.clear()
        got = {httpx.get(r.url + path + "/x", timeout=5).text for _ in range(4)}
        assert got == {"d1\n", "d2\n"}
        assert {s.path for b in (b1, b2) for s in b.requests if s.path != "/health"} == {"/x"}  # strip applied
        resp = httpx.get(r.url + "/anything", headers={"Host": host}, timeout=5)
        assert resp.status_code == 200 and resp.text in ("d1\n", "d2\n")

        # `docker stop` -> Registrator deregisters the container's service: its routes go.
        agent.deregister(ids[0])
        wait_until(lambda: {x["dst"] for x in routes_of(r, svc)} == {f"http://127.0.0.1:{b2.port}/"})
        assert {httpx.get(r.url + path, timeout=5).text for _ in range(4)} == {"d2\n"}
        agent.deregister(ids[1])
        wait_until(lambda: routes_of(r, svc) == [])
        assert httpx.get(r.url + path, timeout=5).status_code == 404


def test_failing_http_check_takes_instance_out(consul_agent, backends) -> None:
    """The container dies without being deregistered: Consul's HTTP check fails, the router drops it;
    it comes back on the same port, the check passes, the router routes to it again."""
    agent = Agent(consul_agent.http_url)
    svc, path = f"chk-{uid()}", f"/chk-{uid()}"
    b1, b2 = Backend("c1").start(), Backend("c2").start()
    backends.extend([b1, b2])
    env = {"SERVICE_NAME": svc, "SERVICE_TAGS": f"urlprefix-{path}", "SERVICE_CHECK_HTTP": "/health",
           "SERVICE_CHECK_INTERVAL": "1s", "SERVICE_CHECK_TIMEOUT": "500ms"}
    payloads = [registrator_payload("host1", f"{svc}_{i}", 8080, b.port, env) for i, b in enumerate((b1, b2))]
    for p in payloads:
        agent.register(p)
    with RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath", f"/t-{uid()}/config",
                    ) as r:
        wait_until(lambda: len(routes_of(r, svc)) == 2, timeout=15)
        port = b1.port
        b1.stop()
        wait_until(lambda: agent.check_status(payloads[0]["ID"]) == "critical", timeout=10)
        wait_until(lambda: [x["dst"] for x in routes_of(r, svc)] == [f"http://127.0.0.1:{b2.port}/"])
        assert {httpx.get(r.url + path, timeout=5).text for _ in range(10)} == {"c2\n"}
        services = {s["service"]: s for s in httpx.get(r.ui + "/api/services", timeout=5).json()}
        down = [i for i in services[svc]["instances"] if not i["routed"]]
        assert len(down) == 1 and down[0]["reason"], services[svc]

        b1b = Backend("c1", port=port).start()
        backends.append(b1b)
        wait_until(lambda: len(routes_of(r, svc)) == 2, timeout=15)
        assert "c1\n" in {httpx.get(r.url + path, timeout=5).text for _ in range(20)}
    for p in payloads:
        agent.deregister(p["ID"])
