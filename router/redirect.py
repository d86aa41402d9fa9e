"""`redirect=<code>` targets: build the Location and detect fabio's redirect loop.

`$path` is the request path after strip/prepend and `$host` the request host without its port; the
request query is appended when the target URL has none. A redirect that would send the client to the
very URL it asked for (same scheme, host and path) is a loop: the proxy then skips that route and tries
the next matching host, as fabio does. fabio takes the request scheme only from `X-Forwarded-Proto`;
we fall back to the connection's scheme when that header is absent, which also catches loops of
clients that talk to us directly.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def location(target_url: str, path: str, host: str, query: bytes) -> str:
    url = target_url.replace("$path", path).replace("$host", host.split(":")[0])
    if query and "?" not in url:
        url += "?" + query.decode("latin-1")
    return url


def is_loop(url: str, scope: dict, host: str, path: str) -> bool:
    scheme = scope.get("scheme", "http")
    for name, value in scope["headers"]:
        if name == b"x-forwarded-proto":
            scheme = value.decode("latin-1").split(",")[0].strip().lower()
            break
    u = urlsplit(url)
    return (u.scheme.lower() == scheme and (u.hostname or "") == host.split(":")[0].lower()
            and (u.path or "/") == path)
