"""proxy.auth parsing and htpasswd checks (router/proxy/auth.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from router.proxy.auth import authorise, parse_schemes


def basic(user: str, pw: str) -> dict:
    v = base64.b64encode(f"{user}:{pw}".encode())
    return {"headers": [(b"authorization", b"Basic " + v)]}


def test_refresh_reloads_a_changed_file(tmp_path: Path) -> None:
    f = tmp_path / "u"
    f.write_text("a:" + bcrypt.hashpw(b"one", bcrypt.gensalt(4)).decode() + "\n")
    schemes = parse_schemes(f"name=x;type=basic;file={f};refresh=1ms")
    assert asyncio.run(authorise(schemes, "x", basic("a", "one"))) == (0, None)
    f.write_text("a:" + bcrypt.hashpw(b"two", bcrypt.gensalt(4)).decode() + "\n")
    os.utime(f, (1, 1))  # a different mtime for sure
    status, challenge = asyncio.run(authorise(schemes, "x", basic("a", "one")))
    assert status == 401 and challenge is None  # credentials sent: no challenge
    assert asyncio.run(authorise(schemes, "x", basic("a", "two"))) == (0, None)
    assert asyncio.run(authorise(schemes, "x", {"headers": []})) == (401, b'Basic realm="x"')


@pytest.mark.parametrize("value", ["name=x;type=digest;file=/dev/null", "type=basic;file=/dev/null",
                                   "name=x;type=basic", "name=x;type=basic;file=/does/not/exist", "name=x;bogus"])
def test_bad_proxy_auth(value: str) -> None:
    with pytest.raises(ValueError):
        parse_schemes(value)


def test_router_refuses_bad_proxy_auth() -> None:
    p = subprocess.run([sys.executable, "-m", "router", "-registry.backend", "static", "-proxy.auth",
                        "name=x;type=basic;file=/does/not/exist"], capture_output=True, text=True, timeout=30,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 2 and "proxy.auth" in p.stderr
