"""`proxy.auth` schemes and the `auth=<name>` route option: HTTP basic auth against an htpasswd file.

`proxy.auth = name=a;type=basic;file=/etc/users.htpasswd;realm=Team;refresh=30s` (several schemes
separated by commas). The file is read once at startup and again every `refresh` (checked lazily on
use, by modification time), never per request. Hash formats: router/proxy/htpasswd.py (bcrypt, `$apr1$`,
`$1$`, `{SHA}`); other lines are skipped with a warning naming the file and line.

bcrypt is slow on purpose, so checks run in a worker thread, and a successful check is remembered (by
a SHA-256 digest of the header value, per file version) so a client reusing its credentials costs one
dict lookup. A failure answers 401 `authorization failed`; `WWW-Authenticate` is only sent when the
request carried no credentials at all, as fabio does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field

from router.config.values import parse_duration
from router.proxy import htpasswd

log = logging.getLogger("router.auth")


@dataclass
class BasicAuth:
    name: str
    file: str
    realm: str
    refresh: float = 0.0
    users: dict[str, str] = field(default_factory=dict)
    _mtime: float = 0.0
    _checked: float = 0.0
    _ok: set[bytes] = field(default_factory=set)

    def load(self) -> None:
        self.users = htpasswd.read(self.file)
        self._mtime = os.stat(self.file).st_mtime
        self._checked = time.monotonic()
        self._ok = set()

    def _maybe_reload(self) -> None:
        if self.refresh <= 0 or time.monotonic() - self._checked < self.refresh:
            return
        self._checked = time.monotonic()
        try:
            if os.stat(self.file).st_mtime != self._mtime:
                self.load()
        except OSError as e:
            log.warning("auth %s: cannot re-read %s: %s; keeping the old users", self.name, self.file, e)

    async def check(self, authorization: str | None) -> tuple[bool, bool]:
        """(authorised, send WWW-Authenticate)."""
        self._maybe_reload()
        if authorization is None:
            return False, True
        key = hashlib.sha256(authorization.encode("latin-1", "replace")).digest()
        if key in self._ok:
            return True, False
        scheme, _, cred = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False, False
        try:
            user, sep, password = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, False
        stored = self.users.get(user)
        if not sep or stored is None:
            return False, False
        ok = await asyncio.to_thread(htpasswd.check, stored, password)
        if ok:
            self._ok.add(key)
        return ok, False

    @property
    def challenge(self) -> bytes:
        return f'Basic realm="{self.realm}"'.encode("latin-1", "replace")


def parse_schemes(text: str) -> dict[str, BasicAuth]:
    """The `proxy.auth` value -> schemes by name, files loaded. Raises ValueError naming the problem."""
    schemes: dict[str, BasicAuth] = {}
    for group in (g.strip() for g in text.split(",")):
        if not group:
            continue
        kv = {}
        for part in group.split(";"):
            k, sep, v = part.strip().partition("=")
            if not sep:
                raise ValueError(f"{part!r} in {group!r}: key=value expected")
            kv[k.strip()] = v.strip()
        name, kind, path = kv.get("name", ""), kv.get("type", ""), kv.get("file", "")
        if not name:
            raise ValueError(f"{group!r}: name= is required")
        if kind != "basic":
            raise ValueError(f"{group!r}: type={kind!r} is not supported (only basic)")
        if not path:
            raise ValueError(f"{group!r}: file= is required for type=basic")
        scheme = BasicAuth(name, path, kv.get("realm", name), parse_duration(kv.get("refresh", "0")))
        try:
            scheme.load()
        except OSError as e:
            raise ValueError(f"{group!r}: cannot read {path}: {e.strerror}") from None
        schemes[name] = scheme
    return schemes


async def authorise(schemes: dict[str, BasicAuth], name: str, scope: dict) -> tuple[int, bytes | None]:
    """The proxy's one call: 0 if allowed, else (401, WWW-Authenticate value or None).

    A route naming a scheme that is not configured is refused, never left open.
    """
    scheme = schemes.get(name)
    if scheme is None:
        log.warning("route uses auth=%s, which proxy.auth does not define; refusing the request", name)
        return 401, None
    header = None
    for n, v in scope["headers"]:
        if n == b"authorization":
            header = v.decode("latin-1")
            break
    ok, challenge = await scheme.check(header)
    if ok:
        return 0, None
    return 401, scheme.challenge if challenge else None
