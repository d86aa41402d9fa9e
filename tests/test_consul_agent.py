"""The Consul test infrastructure itself: agent lifecycle, readiness and the registration helpers."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from tests.consul_agent import ConsulAgent
from tests.consul_helpers import deregister, kv_put, register, set_check, wait_until

pytestmark = pytest.mark.consul


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _health(agent: ConsulAgent, name: str, **params: str) -> list[dict]:
    r = httpx.get(f"{agent.http_url}/v1/health/service/{name}", params=params, timeout=5, trust_env=False)
    r.raise_for_status()
    return r.json()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_agent_is_ready(consul_agent: ConsulAgent) -> None:
    assert consul_agent.is_running()
    assert consul_agent.addr == f"127.0.0.1:{consul_agent.port}"
    assert consul_agent.http_url == f"http://{consul_agent.addr}"
    r = httpx.get(f"{consul_agent.http_url}/v1/catalog/nodes", timeout=5, trust_env=False)
    assert r.status_code == 200
    assert r.headers["x-consul-knownleader"] == "true"
    assert int(r.headers["X-Consul-Index"]) >= 2
    assert [n["Node"] for n in r.json()] == [consul_agent.node]
    leader = httpx.get(f"{consul_agent.http_url}/v1/status/leader", timeout=5, trust_env=False).json()
    assert leader == f"127.0.0.1:{consul_agent.ports['server']}"


def test_register_and_check_status(consul_agent: ConsulAgent, consul_client) -> None:
    name, sid = _uid("web"), _uid("web-1")
    register(consul_client, name, sid, 8080, ["urlprefix-/web", "v1"])

    [entry] = _health(consul_agent, name)
    assert entry["Service"]["ID"] == sid
    assert entry["Service"]["Port"] == 8080
    assert entry["Service"]["Address"] == "127.0.0.1"
    assert entry["Service"]["Tags"] == ["urlprefix-/web", "v1"]
    checks = {c["CheckID"]: c["Status"] for c in entry["Checks"]}
    assert checks[f"{sid}-ttl"] == "passing"
    assert len(_health(consul_agent, name, passing="1")) == 1

    set_check(consul_client, sid, "critical")
    [entry] = _health(consul_agent, name)
    assert {c["CheckID"]: c["Status"] for c in entry["Checks"]}[f"{sid}-ttl"] == "critical"
    assert _health(consul_agent, name, passing="1") == []

    set_check(consul_client, sid, "passing")
    assert len(_health(consul_agent, name, passing="1")) == 1

    deregister(consul_client, sid)
    assert _health(consul_agent, name) == []


def test_register_with_initial_critical_status(consul_agent: ConsulAgent, consul_client) -> None:
    name, sid = _uid("api"), _uid("api-1")
    register(consul_client, name, sid, 9000, ["t"], address="127.0.0.2", status="critical")
    [entry] = _health(consul_agent, name)
    assert entry["Service"]["Address"] == "127.0.0.2"
    assert {c["CheckID"]: c["Status"] for c in entry["Checks"]}[f"{sid}-ttl"] == "critical"
    deregister(consul_client, sid)


def test_kv_put(consul_agent: ConsulAgent, consul_client) -> None:
    key = f"test/{_uid('k')}"
    kv_put(consul_client, key, "hello")
    r = httpx.get(f"{consul_agent.http_url}/v1/kv/{key}", params={"raw": "1"}, timeout=5, trust_env=False)
    assert r.text == "hello"


def test_wait_until() -> None:
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3, timeout=2) is True
    with pytest.raises(AssertionError, match="timed out after 0.1s waiting for never"):
        wait_until(lambda: False, timeout=0.1, message="never")


def test_pause_resume(fresh_consul: ConsulAgent) -> None:
    url = f"{fresh_consul.http_url}/v1/status/leader"
    fresh_consul.pause()
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.get(url, timeout=0.5, trust_env=False)
    finally:
        fresh_consul.resume()
    r = wait_until(lambda: httpx.get(url, timeout=2, trust_env=False), timeout=5)
    assert r.status_code == 200


def test_stop_ends_process(fresh_consul: ConsulAgent) -> None:
    pid = fresh_consul.pid
    assert pid is not None and _pid_alive(pid)
    fresh_consul.stop()
    assert not fresh_consul.is_running()
    assert not _pid_alive(pid)  # reaped, not a zombie
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{fresh_consul.http_url}/v1/status/leader", timeout=1, trust_env=False)


def test_kill_and_restart_same_ports(fresh_consul: ConsulAgent) -> None:
    c_port, old_pid = fresh_consul.port, fresh_consul.pid
    fresh_consul.kill()
    assert old_pid is not None and not _pid_alive(old_pid)
    fresh_consul.restart()
    assert fresh_consul.port == c_port and fresh_consul.pid != old_pid
    r = httpx.get(f"{fresh_consul.http_url}/v1/catalog/nodes", timeout=5, trust_env=False)
    assert r.status_code == 200


def test_server_mode_keeps_data(tmp_path) -> None:
    agent = ConsulAgent(data_dir=tmp_path / "data", workdir=tmp_path / "work")
    try:
        agent.start()
        assert httpx.put(f"{agent.http_url}/v1/kv/keep", content=b"v1", trust_env=False).json() is True
        agent.restart()
        r = httpx.get(f"{agent.http_url}/v1/kv/keep", params={"raw": "1"}, timeout=5, trust_env=False)
        assert r.text == "v1"
    finally:
        agent.stop()
