"""Write protection of the admin UI: credentials off loopback, no cross-site writes, no secrets in /api/config.

The app runs in-process (Starlette's TestClient) so a test can choose the peer address; saves go to a
real Consul agent, so "refused" is checked by what is (not) stored.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request

from router.config.settings import load
from router.proxy import htpasswd
from router.run.router import Router
from tests.consul_helpers import make_client
from ui.security import WriteGuard, host_name, is_local_host, is_loopback

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we have and it works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

REMOTE = ("192.0.2.10", 40000)
LOOPBACK = ("127.0.0.1", 40000)


def sha_entry(user: str, password: str) -> str:
    return f"{user}:{{SHA}}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.1")
    assert not is_loopback("192.0.2.10") and not is_loopback("testclient") and not is_loopback(None)


def test_local_host_names() -> None:
    assert host_name("LocalHost:9998") == "localhost" and host_name("[::1]:9998") == "::1"
    assert host_name("localhost.") == "localhost" and host_name("::1") == "::1" and host_name(None) == ""
    for ok in ("localhost", "localhost:9998", "127.0.0.1:9998", "127.8.9.1", "[::1]:9998", "[::1]"):
        assert is_local_host(ok), ok
    for bad in ("evil.example:9998", "localhost.evil.example", "127.0.0.1.evil.example", "0.0.0.0:9998",
                "192.0.2.7:9998", "", None, "[::]:9998"):
        assert not is_local_host(bad), bad
    # ui.addr's own literal host counts; a wildcard ui.addr (the default :9998) adds nothing
    assert is_local_host("192.0.2.7:9998", "192.0.2.7") and is_local_host("Router.Lan:9998", "router.lan")
    assert not is_local_host("0.0.0.0:9998", "0.0.0.0") and not is_local_host("[::]:9998", "::")
    assert not is_local_host("evil.example", "router.lan")


def request(peer: str, host: str, **headers: str) -> Request:
    hs = {"host": host, "content-type": "application/json", **headers}
    return Request({"type": "http", "method": "PUT", "path": "/api/manual", "headers":
                    [(k.encode(), v.encode()) for k, v in hs.items()], "client": (peer, 40000)})


def test_write_guard_decisions() -> None:
    """The rule on its own: a loopback peer is trusted only under a local Host, and only if trust_loopback."""
    open_guard = WriteGuard()
    assert open_guard.write_refusal(request("127.0.0.1", "localhost:9998")) is None
    assert open_guard.write_refusal(request("::1", "[::1]:9998")) is None
    assert open_guard.write_refusal(request("127.0.0.1", "evil.example:9998")).status_code == 403
    assert open_guard.write_refusal(request("192.0.2.1", "localhost:9998")).status_code == 403  # Host is not the peer
    tok = WriteGuard(token="t0k")
    assert tok.write_refusal(request("127.0.0.1", "evil.example")).headers["www-authenticate"].startswith("Bearer")
    assert tok.write_refusal(request("127.0.0.1", "evil.example", authorization="Bearer t0k")) is None
    strict = WriteGuard(token="t0k", trust_loopback=False)  # for a reverse proxy on the router's host
    assert strict.write_refusal(request("127.0.0.1", "127.0.0.1:9998")).status_code == 401
    assert strict.write_refusal(request("127.0.0.1", "127.0.0.1:9998", authorization="Bearer t0k")) is None
    assert WriteGuard(trust_loopback=False).write_refusal(request("127.0.0.1", "localhost")).status_code == 403


def test_htpasswd_entries(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", "-salt", "Zq9.x/ab", "pw2"], capture_output=True,
                          text=True, check=True).stdout.strip()
    md5 = subprocess.run(["openssl", "passwd", "-1", "-salt", "s4lt", "längeres passwort 1234567890"],
                         capture_output=True, text=True, check=True).stdout.strip()
    f.write_text(sha_entry("ann", "s3cret") + f"\ncid:{apr1}\ndee:{md5}\nbob:plaintext\neve:abJnggxhB/yWI\n# c\n")
    users = htpasswd.read(str(f))
    assert list(users) == ["ann", "cid", "dee"]  # plain text and DES-crypt are skipped, not guessed at
    assert htpasswd.check(users["ann"], "s3cret") and not htpasswd.check(users["ann"], "S3cret")
    assert htpasswd.check(users["cid"], "pw2") and not htpasswd.check(users["cid"], "pw3")
    assert htpasswd.check(users["dee"], "längeres passwort 1234567890") and not htpasswd.check(users["dee"], "x")


@pytest.fixture
def app_factory(consul_agent, tmp_path: Path) -> Iterator:  # type: ignore[no-untyped-def]
    """Build a Router (not started) on the shared agent with its own kvpath; yields (client_for, key)."""
    kvpath = f"t-{uuid.uuid4().hex[:8]}/config"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(sha_entry("ann", "s3cret") + "\n")
    clients: list[TestClient] = []

    def make(peer: tuple[str, int], *flags: str, with_htpasswd: bool = False,
             base_url: str = "http://127.0.0.1:9998") -> TestClient:
        extra = ["-ui.auth.htpasswd", str(htpasswd)] if with_htpasswd else []
        cfg = load(["-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath", kvpath, *extra, *flags])
        client = TestClient(Router(cfg).ui, client=peer, base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    yield make, kvpath
    for c in clients:
        c.__exit__(None, None, None)


def stored(consul_agent, key: str) -> str | None:  # type: ignore[no-untyped-def]
    item = make_client(consul_agent.port).kv.get(key)[1]
    return None if item is None else item["Value"].decode()


def save(client: TestClient, value: str, **headers: str) -> int:
    return client.put("/api/manual", json={"value": value, "version": "0"}, headers=headers).status_code



@pytest.mark.consul
def test_remote_write_needs_configured_credentials(consul_agent, app_factory) -> None:
    make, key = app_factory
    remote = make(REMOTE)
    assert save(remote, "route del a\n") == 403
    assert remote.get("/api/manual").status_code == 200  # reads stay open in rw
    assert stored(consul_agent, key) is None
    assert save(make(LOOPBACK), "route del a\n") == 200  # loopback needs none
    assert stored(consul_agent, key) == "route del a\n"


@pytest.mark.consul
def test_remote_write_with_token(consul_agent, app_factory) -> None:
    make, key = app_factory
    remote = make(REMOTE, "-ui.auth.token", "tok-123")
    r = remote.put("/api/manual", json={"value": "route del b\n", "version": "0"})
    # a token only: the challenge names Bearer, so a browser shows no login prompt it could not satisfy
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert save(remote, "route del b\n", authorization="Bearer wrong") == 401
    assert stored(consul_agent, key) is None
    assert save(remote, "route del b\n", authorization="Bearer tok-123") == 200
    assert stored(consul_agent, key) == "route del b\n"


@pytest.mark.consul
def test_remote_write_with_htpasswd(consul_agent, app_factory) -> None:
    make, key = app_factory
    remote = make(REMOTE, with_htpasswd=True)
    bad = "Basic " + base64.b64encode(b"ann:nope").decode()
    good = "Basic " + base64.b64encode(b"ann:s3cret").decode()
    r = remote.put("/api/manual", json={"value": "route del c\n", "version": "0"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert save(remote, "route del c\n", authorization=bad) == 401
    assert stored(consul_agent, key) is None
    assert save(remote, "route del c\n", authorization=good) == 200
    assert stored(consul_agent, key) == "route del c\n"


@pytest.mark.consul
@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"content-type": "text/plain"},
    {"content-type": "application/x-www-form-urlencoded"},
])
def test_cross_site_writes_are_refused_even_from_loopback(consul_agent, app_factory, headers) -> None:
    make, key = app_factory
    local = make(LOOPBACK, "-ui.auth.token", "tok-123")
    body = '{"value": "route del d\\n", "version": "0"}'
    h = {"content-type": "application/json", "authorization": "Bearer tok-123", **headers}
    r = local.put("/api/manual", content=body, headers=h)
    assert r.status_code == 403, r.text
    assert stored(consul_agent, key) is None
    # the same request from our own page is accepted
    ok = local.put("/api/manual", content=body, headers={
        "content-type": "application/json", "origin": "http://127.0.0.1:9998", "sec-fetch-site": "same-origin"})
    assert ok.status_code == 200
    assert stored(consul_agent, key) == "route del d\n"


@pytest.mark.consul
def test_config_never_shows_secrets(consul_agent, app_factory) -> None:
    make, _ = app_factory
    client = make(REMOTE, "-ui.auth.token", "tok-SECRET-1", "-registry.consul.token", "acl-SECRET-2")
    text = client.get("/api/config").text
    assert "SECRET" not in text
    cfg = client.get("/api/config").json()
    assert cfg["ui.auth.token"] == "<redacted>" and cfg["registry.consul.token"] == "<redacted>"


@pytest.mark.consul
def test_read_only_refuses_even_with_credentials(consul_agent, app_factory) -> None:
    make, key = app_factory
    local = make(LOOPBACK, "-ui.access", "ro", "-ui.auth.token", "tok")
    assert save(local, "route del e\n", authorization="Bearer tok") == 403
    assert local.get("/api/paths").status_code == 403
    assert stored(consul_agent, key) is None


def browser_save(client: TestClient, origin: str, value: str, **headers: str) -> int:
    """A save as our own editor sends it from a page at `origin` (same-origin fetch, JSON body)."""
    return client.put("/api/manual", json={"value": value, "version": "0"},
                      headers={"origin": origin, "sec-fetch-site": "same-origin", **headers}).status_code


@pytest.mark.consul
def test_dns_rebinding_from_loopback_needs_credentials(consul_agent, app_factory) -> None:
    """evil.example resolving to 127.0.0.1: loopback peer, Host and Origin evil.example, same-origin."""
    make, key = app_factory
    evil = "http://evil.example:9998"
    rebound = make(LOOPBACK, base_url=evil)
    assert browser_save(rebound, evil, "route del rebound\n") == 403
    assert "DNS rebinding" in rebound.put("/api/manual", json={"value": "x", "version": "0"}).text
    assert stored(consul_agent, key) is None
    # with credentials configured, the rebound page gets the remote peer's answer: 401 unless it has them
    guarded = make(LOOPBACK, "-ui.auth.token", "tok-rb", base_url=evil)
    assert browser_save(guarded, evil, "route del rebound\n") == 401
    assert stored(consul_agent, key) is None
    assert browser_save(guarded, evil, "route del rebound\n", authorization="Bearer tok-rb") == 200
    assert stored(consul_agent, key) == "route del rebound\n"


@pytest.mark.consul
@pytest.mark.parametrize("base_url", ["http://localhost:9998", "http://127.0.0.1:9998", "http://127.3.4.5:9998",
                                      "http://[::1]:9998", "http://localhost"])
def test_plain_loopback_use_needs_no_credentials(consul_agent, app_factory, base_url) -> None:
    make, key = app_factory
    local = make(LOOPBACK, "-ui.auth.token", "tok-unused", base_url=base_url)
    assert browser_save(local, base_url, "route del local\n") == 200
    assert stored(consul_agent, key) == "route del local\n"


@pytest.mark.consul
def test_ui_addr_host_counts_as_local(consul_agent, app_factory) -> None:
    """-ui.addr router.lan:9998 (or an IP): a browser on the router's host may use that name without credentials;
    the wildcard default (:9998 = 0.0.0.0) adds no name."""
    make, key = app_factory
    named = make(LOOPBACK, "-ui.addr", "router.lan:9998", base_url="http://router.lan:9998")
    assert browser_save(named, "http://router.lan:9998", "route del named\n") == 200
    assert stored(consul_agent, key) == "route del named\n"
    wildcard = make(LOOPBACK, base_url="http://0.0.0.0:9998")
    assert browser_save(wildcard, "http://0.0.0.0:9998", "route del wild\n") == 403
    assert stored(consul_agent, key) == "route del named\n"


@pytest.mark.consul
def test_loopback_trust_can_be_switched_off(consul_agent, app_factory) -> None:
    """-ui.auth.loopback false (a reverse proxy on the router's host): loopback saves need credentials too."""
    make, key = app_factory
    strict = make(LOOPBACK, "-ui.auth.loopback", "false", "-ui.auth.token", "tok-9")
    assert save(strict, "route del strict\n") == 401
    assert stored(consul_agent, key) is None
    assert save(strict, "route del strict\n", authorization="Bearer tok-9") == 200
    assert stored(consul_agent, key) == "route del strict\n"
