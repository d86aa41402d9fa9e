"""`redirect=<code>` targets: build the Location and detect fabio's redirect loop.

The Location is built the way fabio's `BuildRedirectURL` builds it from the target URL:

* `$path` is the request path after strip/prepend, in the client's own encoding. A `/` right before
  `$path` is dropped (the request path brings its own), and `$path` may also follow the host directly
  (`https://x.com$path`). Only the first `$path` of the URL's path is replaced.
* The request query is appended only when the URL's path contains `$path` and the URL has no query of
  its own.
* An empty path becomes `/`; a fragment or user info in the target URL is not sent.
* `$host` (in the host part only) is the request's `Host` as sent, port included.

A redirect that would send the client to the very URL it asked for (same scheme, host and path) is a
loop: the proxy then skips that route and tries the next matching host, as fabio does. fabio takes the
request scheme only from `X-Forwarded-Proto`; we fall back to the connection's scheme when that header
is absent, which also catches loops of clients that talk to us directly (docs/compat.md).
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit


@lru_cache(maxsize=4096)
def _template(target_url: str) -> tuple[str, str, str, str]:
    """(scheme, host part, path, query) of a redirect target, with fabio's `$path` rewrites applied."""
    scheme, _, rest = target_url.partition("://")
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if 0 <= i < end:
            end = i
    authority, tail = rest[:end], rest[end:]
    authority = authority.rpartition("@")[2]
    tail = tail.partition("#")[0]
    path, _, query = tail.partition("?")
    if authority.endswith("$path"):  # `https://x.com$path`: the URL parser sees `$path` as part of the host
        authority, path = authority[: -len("$path")], "$path"
    path = path.replace("/$path", "$path", 1)
    return scheme.lower(), authority, path, query


def location(target_url: str, path: str, host: str, query: bytes) -> str:
    """The Location for a request: `path` is the (raw) request path after strip/prepend, `host` its Host."""
    scheme, authority, tpath, tquery = _template(target_url)
    if "$path" in tpath:
        tpath = tpath.replace("$path", path, 1)
        if not tquery and query:
            tquery = query.decode("latin-1")
    if "$host" in authority:
        authority = authority.replace("$host", host, 1)
    url = f"{scheme}://{authority}{tpath or '/'}"
    return f"{url}?{tquery}" if tquery else url


def _host_key(hostport: str, scheme: str) -> str:
    h = hostport.lower()
    default = ":443" if scheme == "https" else ":80"
    return h[: -len(default)] if h.endswith(default) else h


def is_loop(url: str, scope: dict, host: str, path: str) -> bool:
    """True when `url` names the request itself: same scheme, host (default port ignored) and path."""
    scheme = scope.get("scheme", "http")
    for name, value in scope["headers"]:
        if name == b"x-forwarded-proto":
            scheme = value.decode("latin-1").split(",")[0].strip().lower()
            break
    u = urlsplit(url)
    return (u.scheme.lower() == scheme and _host_key(u.netloc, scheme) == _host_key(host, scheme)
            and unquote(u.path or "/") == path)
