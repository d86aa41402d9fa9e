"""Request and response header rewriting (``reqhdr.*`` / ``resphdr.*`` route options).

Order: remove, then set (which replaces every value of its name), then add. The option parser
(router/table/policyopts.py) refuses forwarding headers, Host, Via and hop-by-hop names on the request
side and the framing headers on the response side, so what the router sets stays as it sets it.
"""

from __future__ import annotations

from router.table.policyopts import HeaderEdit

__all__ = ["request", "response"]


def request(edit: HeaderEdit, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream request headers (lower-case ``str`` names, as router/proxy/headers.py builds them)."""
    drop = edit.drop
    out = [h for h in headers if h[0] not in drop] if drop else list(headers)
    out += edit.extra
    return out


def response(edit: HeaderEdit, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Client response headers (lower-case ``bytes`` names)."""
    drop = edit.drop_b
    out = [h for h in headers if h[0] not in drop] if drop else list(headers)
    out += edit.extra_b
    return out
