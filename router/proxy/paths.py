"""Request paths as the upstream and the access log see them: normalised, stripped, prepended, and the raw
(still percent-encoded) form kept where it can be. Pure functions, shared by the handler, the WebSocket
tunnel and the access log."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, unquote


def normalise_path(path: str) -> str:
    """Resolve `.`/`..` and repeated slashes, keeping a trailing slash, so `/a/../b` is routed as `/b`."""
    if "//" not in path and "/." not in path:
        return path or "/"
    segs = path.split("/")
    return _without_dot_segments(segs, segs)


def _without_dot_segments(segs: list[str], values: list[str]) -> str:
    """RFC 3986 dot-segment removal (and empty segments dropped) over `segs`, each judged by its entry in
    `values`; a path ending in a slash or a dot segment keeps a trailing slash (`/a/b/..` -> `/a/`)."""
    out: list[str] = []
    for seg, value in zip(segs, values):  # noqa: B905 - equal lengths by construction; strict costs here
        if value in ("", "."):
            continue
        if value == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    clean = "/" + "/".join(out)
    if clean != "/" and values[-1] in ("", ".", ".."):
        clean += "/"
    return clean


def upstream_path(target, path: str) -> str:  # type: ignore[no-untyped-def]
    """The (decoded) path sent upstream: `strip=` removed (a leading slash kept), then `prepend=` added."""
    up_path = path
    if target.strip and (up_path == target.strip or up_path.startswith(target.strip.rstrip("/") + "/")):
        up_path = up_path[len(target.strip.rstrip("/")) :] or "/"
        if not up_path.startswith("/"):
            up_path = "/" + up_path
    if target.prepend:
        up_path = target.prepend.rstrip("/") + up_path
    return up_path


# RFC 3986 pchar plus "/", without "%": when a decoded path has to be encoded, a literal "%" becomes %25.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_HEX2 = frozenset(a + b for a in "0123456789abcdefABCDEF" for b in "0123456789abcdefABCDEF")


@lru_cache(maxsize=1024)
def _encoded_prepend(prepend: str) -> str:
    return quote(prepend.rstrip("/"), safe=_PATH_SAFE)  # prepend= is a decoded path, as in fabio


def _raw_prefix_len(raw: str, prefix: str) -> int:
    """Length of the start of `raw` that decodes to `prefix`, or -1 if none does."""
    if "%" not in prefix and raw.startswith(prefix):
        return len(prefix)
    want, n, i, end = len(prefix.encode("utf-8")), 0, 0, len(raw)
    while n < want and i < end:
        i += 3 if raw[i] == "%" and raw[i + 1 : i + 3] in _HEX2 else 1
        n += 1
    return i if n == want and unquote(raw[:i]) == prefix else -1


def _normalise_raw(raw: str) -> str:
    """normalise_path on the raw path: dot segments are recognised by their decoded value (`%2e%2e`)."""
    segs = raw.split("/")
    return _without_dot_segments(segs, [unquote(s) if "%" in s else s for s in segs])


def upstream_raw_path(target, path: str, scope: dict, up_path: str = "") -> str:  # type: ignore[no-untyped-def]
    """The upstream path in the client's own encoding (`%2F` stays `%2F`, `%25` stays `%25`).

    strip=/prepend= are decided on `path` (the normalised decoded path, see upstream_path) and applied to
    scope["raw_path"] at the same place. Where the raw path can't be cut the same way (an encoded `/` at
    the cut, or dot segments hidden in `%2F`), the decoded result is encoded instead.
    """
    up_path = up_path or upstream_path(target, path)
    raw_bytes = scope.get("raw_path")
    decoded = scope["path"]
    if not raw_bytes:
        return quote(up_path, safe=_PATH_SAFE)
    raw = raw_bytes.decode("latin-1")
    if up_path == decoded:
        return raw
    if path == decoded and not target.prepend and "%" not in raw:
        return up_path  # nothing encoded, nothing normalised: the raw path is the decoded one, cut alike
    if path != decoded:
        raw = _normalise_raw(raw)
    strip = target.strip
    if strip and (path == strip or path.startswith(strip.rstrip("/") + "/")):
        cut = _raw_prefix_len(raw, strip.rstrip("/"))
        if cut < 0:
            return quote(up_path, safe=_PATH_SAFE)
        raw = raw[cut:] or "/"
        if not raw.startswith("/"):
            raw = "/" + raw
    if target.prepend:
        raw = _encoded_prepend(target.prepend) + raw
    return raw if unquote(raw) == up_path else quote(up_path, safe=_PATH_SAFE)


def redirect_path(target, path: str, raw: str) -> str:  # type: ignore[no-untyped-def]
    """The `$path` of a `redirect=` target: the upstream raw path, except that a `strip=` which takes the
    whole path leaves it empty (plus any `prepend=`), as in fabio: `strip=/foo` and
    `https://x.com/bbb$path` send a request for exactly `/foo` to `https://x.com/bbb`, not `.../bbb/`."""
    if target.strip and path == target.strip:
        return _encoded_prepend(target.prepend) if target.prepend else ""
    return raw
