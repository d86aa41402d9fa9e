"""Who may change overrides through the admin UI.

Three gates, in order: `ui.access=ro` closes the override endpoints entirely (403, as fabio does);
a write must be a same-origin JSON request (a hostile page in the operator's browser cannot forge one:
browsers send `Origin`/`Sec-Fetch-Site` and need a CORS preflight, which we never grant, for a JSON
body); and a write from anywhere but loopback must carry credentials (basic auth checked against an
htpasswd file, or a bearer token). The peer address is the socket's: forwarding headers are not trusted.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from router.proxy import htpasswd as htpasswd_file

log = logging.getLogger("ui.security")


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def host_name(header: str | None) -> str:
    """`Host` header -> its host part, lower-case, without port, brackets or a trailing dot ("" if absent)."""
    h = (header or "").strip().lower()
    if h.startswith("["):
        h = h[1:].partition("]")[0]
    elif h.count(":") == 1:
        h = h.partition(":")[0]
    return h.rstrip(".")


def is_local_host(header: str | None, ui_host: str = "") -> bool:
    """True if `Host` names this machine in a way DNS cannot rebind: localhost, a loopback literal, or
    the literal host of ui.addr (not a wildcard such as 0.0.0.0)."""
    h = host_name(header)
    if not h:
        return False
    if h == "localhost" or is_loopback(h):
        return True
    own = ui_host.strip("[]").lower().rstrip(".")
    if not own or own in ("0.0.0.0", "::"):
        return False
    return h == own


class WriteGuard:
    """Decides whether one request may write; configured from ui.access, ui.auth.* and ui.addr's host."""

    def __init__(self, access: str = "rw", htpasswd: str = "", token: str = "", ui_host: str = "",
                 trust_loopback: bool = True) -> None:
        self.read_only = access == "ro"
        self.ui_host = ui_host
        self.trust_loopback = trust_loopback  # False: every write needs credentials, loopback too
        self.token = token
        self.htpasswd = htpasswd
        self.users = htpasswd_file.read(htpasswd) if htpasswd else {}

    @property
    def has_credentials(self) -> bool:
        return bool(self.token or self.users)

    def ro_refusal(self) -> Response | None:
        """403 for the override endpoints (reads too) when the UI is read-only."""
        if self.read_only:
            return PlainTextResponse("forbidden: ui.access is ro\n", status_code=403)
        return None

    def write_refusal(self, request: Request) -> Response | None:
        """None if this request may write, else the response that refuses it."""
        if (ro := self.ro_refusal()) is not None:
            return ro
        if (why := cross_site(request)) is not None:
            return PlainTextResponse(f"forbidden: {why}\n", status_code=403)
        peer = request.client.host if request.client else None
        local = (self.trust_loopback and is_loopback(peer)
                 and is_local_host(request.headers.get("host"), self.ui_host))
        if local or self.authenticated(request):
            return None
        if not self.has_credentials:
            if is_loopback(peer) and not self.trust_loopback:
                why = "writes need ui.auth.token or ui.auth.htpasswd (loopback is not trusted)"
            elif is_loopback(peer):
                why = (f"Host {request.headers.get('host', '')!r} is not localhost, a loopback address or "
                       "ui.addr's host (DNS rebinding?); such writes need ui.auth.token or ui.auth.htpasswd")
            else:
                why = "writes from other hosts than loopback need ui.auth.token or ui.auth.htpasswd"
            return PlainTextResponse(f"forbidden: {why}\n", status_code=403)
        # Basic only when there are users to check: a browser answers it with a login prompt, which is no
        # use with just a token (the editor sends that itself), so then the challenge names Bearer.
        challenge = ('Basic realm="consul-router", charset="UTF-8"' if self.users
                     else 'Bearer realm="consul-router"')
        return PlainTextResponse("credentials required\n", status_code=401, headers={"WWW-Authenticate": challenge})

    def authenticated(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, cred = auth.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token:
            return hmac.compare_digest(cred.strip().encode(), self.token.encode())
        if scheme == "basic" and self.users:
            try:
                user, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            hashed = self.users.get(user)
            return hashed is not None and htpasswd_file.check(hashed, password)
        return False


def cross_site(request: Request) -> str | None:
    """Why this write looks cross-site (or not like our editor), or None when it is fine."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return "writes must be application/json"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
            return f"cross-site request refused (Origin: {origin})"
    return None
