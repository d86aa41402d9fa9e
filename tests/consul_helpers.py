"""Small helpers for tests that talk to a real Consul agent through python-consul2."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import consul

T = TypeVar("T")

# python-consul2 reads these in Consul.__init__ and lets CONSUL_HTTP_ADDR override host/port; a developer's
# own settings must never point a test client at their real Consul.
_CLIENT_ENV = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_HTTP_TOKEN")

DEFAULT_TTL = "10m"  # long enough that a TTL check never lapses on its own during a test
_STATUS_CALLS = {"passing": "ttl_pass", "warning": "ttl_warn", "critical": "ttl_fail"}


@contextlib.contextmanager
def _without_client_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in _CLIENT_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_client(port: int, host: str = "127.0.0.1", timeout: float = 10) -> consul.Consul:
    """A python-consul2 client bound to host:port, ignoring CONSUL_HTTP_* and proxy env vars."""
    with _without_client_env(), warnings.catch_warnings():
        # Consul.__init__ warns about API deprecations (legacy ACL, ...) that these tests don't use.
        warnings.simplefilter("ignore", DeprecationWarning)
        c = consul.Consul(host=host, port=port, timeout=timeout)
    c.http.session.trust_env = False  # no HTTP(S)_PROXY for loopback
    return c


def register(
    c: consul.Consul,
    name: str,
    id: str,  # noqa: A002 - mirrors Consul's "ID"
    port: int,
    tags: list[str] | tuple[str, ...] = (),
    address: str = "127.0.0.1",
    ttl: bool | str = True,
    status: str = "passing",
    meta: dict[str, str] | None = None,
) -> None:
    """Register service `id` (name `name`) through the agent API.

    With ttl (True, or a duration such as "30s"; True means DEFAULT_TTL) it gets a TTL check whose CheckID is
    f"{id}-ttl", set to `status` ("passing", "warning" or "critical"). ttl=False registers no check.
    """
    if status not in _STATUS_CALLS:
        raise ValueError(f"status must be one of {sorted(_STATUS_CALLS)}, not {status!r}")
    check: dict[str, Any] | None = None
    if ttl:
        # Consul decodes field names case-insensitively; python-consul2 passes the dict through as "check".
        check = {
            "CheckID": f"{id}-ttl",
            "Name": f"{id} ttl",
            "TTL": DEFAULT_TTL if ttl is True else str(ttl),
            "Status": status,
        }
    ok = c.agent.service.register(
        name, service_id=id, address=address, port=port, tags=list(tags), check=check, meta=meta
    )
    assert ok, f"registering service {id!r} failed"
    if ttl:
        set_check(c, id, status)


def set_check(c: consul.Consul, id: str, status: str, output: str = "") -> None:  # noqa: A002
    """Set the TTL check f"{id}-ttl" (from register()) to passing / warning / critical."""
    try:
        method = getattr(c.agent.check, _STATUS_CALLS[status])
    except KeyError:
        raise ValueError(f"status must be one of {sorted(_STATUS_CALLS)}, not {status!r}") from None
    ok = method(f"{id}-ttl", notes=output or None)
    assert ok, f"setting check {id}-ttl to {status} failed"


def deregister(c: consul.Consul, id: str) -> None:  # noqa: A002
    """Deregister service `id` (and its checks) from the agent."""
    ok = c.agent.service.deregister(id)
    assert ok, f"deregistering service {id!r} failed"


def kv_put(c: consul.Consul, key: str, value: str | bytes) -> None:
    ok = c.kv.put(key, value)
    assert ok, f"KV put {key!r} failed"


def wait_until(
    fn: Callable[[], T],
    timeout: float = 10,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call fn() until it returns something truthy and return that; AssertionError after `timeout` seconds.

    Exceptions from fn() count as "not yet"; the last one is reported if it never succeeds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = fn()
            last_exc = None
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - retry on anything, report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            desc = getattr(fn, "__name__", repr(fn))
            detail = f"last exception: {last_exc!r}" if last_exc is not None else f"last result: {last!r}"
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or desc}; {detail}"
            ) from last_exc
        time.sleep(interval)


def uid() -> str:
    """A short random suffix, so tests sharing one Consul agent never collide on names or keys."""
    return uuid.uuid4().hex[:8]
