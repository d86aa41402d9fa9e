"""Parsers of configuration values: one function per kind of value, each raising ValueError with what it
accepts.

Pure functions, no I/O, so every key's syntax is table-tested on its own: Go durations (with bounds),
booleans, numbers and ranges, choices and lists, the Consul address, regular expressions, fabio's
`ui.color`, and the redaction of passwords inside URL-like values. router/config/keys.py pairs each key
with one of these; router/config/settings.py turns their ValueError into a ConfigError naming the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go duration syntax ("1s", "500ms", "1m30s", "0") -> seconds."""
    s = text.strip()
    if s in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError("a duration such as 500ms, 10s, 1m30s")
    return total


def parse_bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("true", "1", "t", "yes", "on"):
        return True
    if v in ("false", "0", "f", "no", "off", ""):
        return False
    raise ValueError("true or false")


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_int(text: str) -> int:
    """A decimal whole number, as Go's strconv.Atoi reads it (no `1_000`, no `1.0`)."""
    if not _INT.fullmatch(text.strip()):
        raise ValueError("a whole number")
    return int(text.strip())


def parse_float(text: str) -> float:
    """A finite decimal number (`nan`, `inf` and `1e999` are refused)."""
    v = text.strip()
    if not _FLOAT.fullmatch(v) or not math.isfinite(float(v)):
        raise ValueError("a number")
    return float(v)


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def choice(*allowed: str, any_case: bool = False) -> Callable[[str], str]:
    """One of `allowed`; with `any_case` the value is upper-cased first (fabio's log.level)."""

    def parse(text: str) -> str:
        v = text.strip().upper() if any_case else text.strip()
        if v not in allowed:
            raise ValueError("one of " + ", ".join(allowed) + (" (in any case)" if any_case else ""))
        return v

    return parse


def int_range(lo: int, hi: int | None = None, zero: str = "") -> Callable[[str], int]:
    """A whole number from `lo` to `hi` (no upper bound if None); `zero`: what 0 means, for the message."""
    if hi is not None:
        accepted = f"a whole number from {lo} to {hi}"
    else:
        accepted = f"a whole number, {lo} or more"
    if zero:
        accepted += f" (0 = {zero})"

    def parse(text: str) -> int:
        try:
            v = parse_int(text)
        except ValueError:
            raise ValueError(accepted) from None
        if v < lo or (hi is not None and v > hi):
            raise ValueError(accepted)
        return v

    return parse


def positive_number(text: str) -> float:
    """A finite number greater than 0."""
    try:
        v = parse_float(text)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise ValueError("a number greater than 0, such as 20 or 0.5")
    return v


def number_range(lo: float, hi: float) -> Callable[[str], float]:
    """A finite number from `lo` to `hi`."""

    def parse(text: str) -> float:
        try:
            v = parse_float(text)
        except ValueError:
            v = math.nan
        if not lo <= v <= hi:
            raise ValueError(f"a number from {lo:g} to {hi:g}")
        return v

    return parse


GO_MAX_DURATION = (2**63 - 1) / 1e9  # seconds: Go's time.Duration is an int64 of nanoseconds (~292 years)


def _fmt_seconds(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


def duration(lo: float = 0.0, hi: float = GO_MAX_DURATION, zero: str = "", hi_why: str = "") -> Callable[[str], float]:
    """A Go duration from `lo` to `hi` seconds. `zero`: what 0 means (0 is then accepted even if lo > 0).

    Go's syntax has no nan/inf, and negative durations are refused everywhere.
    """
    bounds = [f"at least {_fmt_seconds(lo)}"] if lo > 0 else [] if zero else ["0 or more"]
    if hi < GO_MAX_DURATION:
        bounds.append(f"at most {_fmt_seconds(hi)}{hi_why}")
    if zero:
        accepted = f"0 ({zero}) or a positive duration" + (" of " + " and ".join(bounds) + "," if bounds else "")
    else:
        accepted = "a duration of " + " and ".join(bounds) + ","
    accepted += " such as 500ms, 10s or 1m30s"

    def parse(text: str) -> float:
        try:
            v = parse_duration(text)
        except ValueError:
            raise ValueError(accepted) from None
        if v == 0 and zero:
            return 0.0
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(accepted)
        return v

    return parse


def list_of(*allowed: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = parse_list(text)
        bad = [i for i in items if i not in allowed]
        if bad or not items:
            raise ValueError("a comma list of " + ", ".join(allowed))
        return items

    return parse


def parse_consul_addr(text: str) -> str:
    """`host:port`, `http://host:port` or `https://host:port`; the scheme in any case (as fabio reads it)."""
    v = text.strip()
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", v)
    if m:
        scheme = m.group(1).lower()
        if scheme not in ("http", "https"):
            raise ValueError("host:port, http://host:port or https://host:port")
        v = scheme + v[len(m.group(1)) :]
    if v in ("http://", "https://"):
        raise ValueError("host:port, http://host:port or https://host:port")
    return v  # empty: refused in load() when the Consul backend is used


def parse_str(text: str) -> str:
    return text.strip()


def parse_regexp(text: str) -> str:
    """A regular expression, checked now (kept as text; its users compile it)."""
    try:
        re.compile(text.strip())
    except re.error:
        raise ValueError("a regular expression (Python's re syntax, which agrees with Go's for content types)") from None
    return text.strip()


# fabio's UI is built with Materialize, and `ui.color` names one of its colour classes for the nav bar:
# a base colour (its 500 shade below, Material Design's published values), optionally with a modifier
# (`light-green darken-2`).  Our UI has no Materialize, so a modifier is approximated by mixing the base
# with white (lighten-N, N=1..5) or black (darken-N, N=1..4); accent-N keeps the base.  A CSS hex colour
# (`#2e7d32`) is accepted too (ours).
_MATERIAL = {
    "red": "f44336", "pink": "e91e63", "purple": "9c27b0", "deep-purple": "673ab7", "indigo": "3f51b5",
    "blue": "2196f3", "light-blue": "03a9f4", "cyan": "00bcd4", "teal": "009688", "green": "4caf50",
    "light-green": "8bc34a", "lime": "cddc39", "yellow": "ffeb3b", "amber": "ffc107", "orange": "ff9800",
    "deep-orange": "ff5722", "brown": "795548", "grey": "9e9e9e", "blue-grey": "607d8b", "black": "000000",
    "white": "ffffff",
}
_MODIFIER = re.compile(r"(lighten|darken|accent)-([1-5])")
_HEX = re.compile(r"#(?:[0-9a-f]{3}|[0-9a-f]{6})")


def ui_color_rgb(text: str) -> tuple[int, int, int]:
    """The colour `ui.color` names, as (r, g, b); ValueError for anything else."""
    v = " ".join(text.lower().split())
    if _HEX.fullmatch(v):
        h = v[1:] if len(v) == 7 else "".join(c * 2 for c in v[1:])
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    base, _, mod = v.partition(" ")
    if base not in _MATERIAL:
        raise ValueError("a Materialize colour (light-green, blue, red darken-2, ...) or a CSS hex colour (#2e7d32)")
    rgb = tuple(int(_MATERIAL[base][i:i + 2], 16) for i in (0, 2, 4))
    if not mod:
        return rgb  # type: ignore[return-value]
    m = _MODIFIER.fullmatch(mod)
    if m is None or (m[1] == "darken" and m[2] == "5"):
        raise ValueError("a modifier lighten-1..5, darken-1..4 or accent-1..4 after the colour name")
    share = {"lighten": 0.17, "darken": 0.12, "accent": 0.0}[m[1]] * int(m[2])
    target = 255 if m[1] == "lighten" else 0
    return tuple(round(c + (target - c) * share) for c in rgb)  # type: ignore[return-value]


def parse_ui_color(text: str) -> str:
    """`ui.color`, checked here so that a typo stops startup instead of giving a colourless bar."""
    v = " ".join(text.lower().split())
    ui_color_rgb(v)
    return v


# --- secrets inside values

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#]*)@")
_BARE_USERINFO = re.compile(r"^([^\s/?#@:]+):([^\s/?#]*)@(?=[^\s@/]+(?:/|$))")


def redact_userinfo(value: str) -> str:
    """Passwords in URL-like values: `https://user:pw@host` -> `https://user:<redacted>@host`.

    A user name alone (`https://token@host`) may itself be the secret, so it is redacted too.
    """

    def url(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return m.group(1) + (f"{user}:<redacted>" if sep else "<redacted>") + "@"

    value = _URL_USERINFO.sub(url, value)
    return _BARE_USERINFO.sub(lambda m: f"{m.group(1)}:<redacted>@", value)
