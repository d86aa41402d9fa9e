"""A route command's destination compiled into a Target: URL, port, options, all parsed at build time.

Pure parsing, no I/O: `make_target` turns one `route add` into the immutable Target the proxy reads on
every request (scheme, host, port, strip/prepend, Host header, redirect, timeout, access rules and
traffic policy checked now, not on the first request); `hostpath` splits a command's source into the
route key. A bad value raises CmdError, which the builder (router/table/builder.py) reports with the
command's source and line. Unknown options and redirect codes that are not 3xx are logged once and kept,
as fabio does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from router.config.values import parse_duration as config_duration
from router.table import access
from router.table.policyopts import POLICY_OPTS, PolicyError, TargetPolicy, target_policy
from router.table.routecmd import RouteCmd

log = logging.getLogger("router.table")

_EMPTY_OPTS: Mapping[str, str] = MappingProxyType({})
# one object per scheme: the URL regex's match groups are new strings, and a Target keeps its scheme (5 MB
# of "http" at 100,000 targets, in every process holding a table)
_SCHEMES = {s: s for s in ("http", "https", "grpc", "grpcs", "ws", "wss", "tcp", "tcp+sni")}


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream of a route, with everything the proxy needs parsed at build time."""

    service: str
    tags: tuple[str, ...]
    opts: Mapping[str, str]
    url: str
    scheme: str
    host: str
    port: int
    fixed_weight: float
    weight: float
    strip: str
    prepend: str
    host_header: str
    tls_skip_verify: bool
    redirect_code: int
    redirect_url: str
    timeout: float = 0.0  # seconds, from opts "timeout=2s"; 0 = no per-route timeout
    source: str = ""  # where the command came from (a Consul instance: "service:<name>/<ID>"): the instance's identity
    policy: TargetPolicy | None = None  # the traffic-policy options (router/table/policyopts.py); None: none

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """Pickled for the proxy workers, which get their tables' targets from the main process
        (router/run/workers.py): the options as a plain dict (a mappingproxy does not pickle), the rest as
        they are; unpickling goes through the fast constructor below, not a setattr per field."""
        opts = self.opts
        return _revive, (self.service, self.tags, dict(opts) if opts else None, self.url, self.scheme, self.host,
                         self.port, self.fixed_weight, self.weight, self.strip, self.prepend, self.host_header,
                         self.tls_skip_verify, self.redirect_code, self.redirect_url, self.timeout, self.source,
                         self.policy)

    def __hash__(self) -> int:
        # opts is a mapping (unhashable); equal Targets agree on these fields, so this is a valid hash.
        return hash((self.service, self.url, self.scheme, self.host, self.port, self.tags, self.fixed_weight,
                     self.weight))


class _RawTarget:
    """Same slot layout as :class:`Target`, without the frozen ``__setattr__``.

    Why: a frozen dataclass sets each field through ``object.__setattr__``, which makes building a Target
    cost ~2 us; a build creates one per (route, target) pair, so that was most of a 60k-route build.  We
    construct this plain twin and then switch ``__class__`` to Target (allowed: identical slots), which is
    ~3x faster.  The result is an ordinary, frozen Target.
    """

    __slots__ = Target.__slots__

    def __init__(self, service, tags, opts, url, scheme, host, port, fixed_weight, weight, strip,
                 prepend, host_header, tls_skip_verify, redirect_code, redirect_url, timeout, source="",
                 policy=None) -> None:
        self.service = service
        self.tags = tags
        self.opts = opts
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.fixed_weight = fixed_weight
        self.weight = weight
        self.strip = strip
        self.prepend = prepend
        self.host_header = host_header
        self.tls_skip_verify = tls_skip_verify
        self.redirect_code = redirect_code
        self.redirect_url = redirect_url
        self.timeout = timeout
        self.source = source
        self.policy = policy


assert _RawTarget.__slots__ == tuple(f for f in Target.__dataclass_fields__)


def new_target(*args: object) -> Target:
    t = _RawTarget(*args)
    t.__class__ = Target  # type: ignore[assignment]
    return t  # type: ignore[return-value]


def _revive(service: str, tags: tuple[str, ...], opts: dict[str, str] | None, url: str, scheme: str, host: str,
            port: int, fixed_weight: float, weight: float, *rest: object) -> Target:
    """A Target from its pickled fields (Target.__reduce__). Pickle writes every float anew; the weights
    (and the timeout, in `rest`) take one object per value instead (7 MB at 100,000 targets)."""
    floats = _FLOATS
    if len(floats) > 10000:
        floats.clear()
    t = _RawTarget(service, tags, MappingProxyType(opts) if opts else _EMPTY_OPTS, url, scheme, host, port,
                   floats.setdefault(fixed_weight, fixed_weight), floats.setdefault(weight, weight), *rest)
    t.timeout = floats.setdefault(t.timeout, t.timeout)
    t.__class__ = Target  # type: ignore[assignment]
    return t  # type: ignore[return-value]


_FLOATS: dict[float, float] = {}


def reweighted(t: Target, w: float) -> Target:
    if t.weight == w:
        return t
    return new_target(t.service, t.tags, t.opts, t.url, t.scheme, t.host, t.port, t.fixed_weight, w, t.strip,
                       t.prepend, t.host_header, t.tls_skip_verify, t.redirect_code, t.redirect_url, t.timeout,
                       t.source, t.policy)


def refixed(t: Target, fixed: float) -> Target:
    return new_target(t.service, t.tags, t.opts, t.url, t.scheme, t.host, t.port, fixed, t.weight, t.strip,
                       t.prepend, t.host_header, t.tls_skip_verify, t.redirect_code, t.redirect_url, t.timeout,
                       t.source, t.policy)


def hostpath(src: str) -> tuple[str, str]:
    """``host/path`` -> (host, /path); ``/path`` -> ("", /path); ``host`` -> (host, /); ``:port`` -> (:port, "").

    Hosts are lowercased here for add, del and weight alike (fabio only lowercases on add).
    """
    if src.startswith(":"):
        return src.lower(), ""
    i = src.find("/")
    if i < 0:
        return src.lower(), "/"
    return src[:i].lower(), src[i:]


class CmdError(Exception):
    pass


def parse_duration(text: str) -> float:
    """Go-style duration (``2s``, ``500ms``, ``1m30s``, ``0``) in seconds; a bad one is a command error."""
    try:
        return config_duration(text) if text else _bad_duration(text)
    except ValueError:
        return _bad_duration(text)


def _bad_duration(text: str) -> float:
    raise CmdError(f"invalid duration {text!r}")


_URL = re.compile(
    r"([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/?#@]*@)?((\[[^\]/?#]*\]|[^:/?#]*)(?::([^/?#]*))?)(?:[/?#]|$)")


# the usual destination, `http://10.0.0.1:8080/`: a lowercase scheme that has a default port, a plain host
# (no userinfo, no brackets) and an ASCII port; 2k instructions less per target than `_URL` (issue 18)
_URL_COMMON = re.compile(r"(https?|grpcs?|wss?)://(([^:/?#@\[\]]+):([0-9]{1,5}))(?:[/?#]|$)")


def _split_url(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port or None, host[:port] as written) of an absolute URL; one regex match per target.

    The last one is Go's ``url.Host`` (brackets of an IPv6 address kept, no port added), which is what
    fabio sends as ``Host`` for ``host=dst``.
    """
    m = _URL_COMMON.match(url)
    if m is not None and int(m[4]) <= 65535:
        return m[1], m[3], int(m[4]), m[2]
    m = _URL.match(url)
    if m is None:
        raise CmdError(f"invalid destination URL {url!r}: scheme://host[:port] expected")
    scheme, written, host, port_text = m.groups()
    if not host:
        raise CmdError(f"invalid destination URL {url!r}: no host")
    if host[0] == "[":
        host = host[1:-1]
    if not port_text:  # "http://h:" is accepted by Go's url.Parse too
        return scheme.lower(), host, None, written
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:  # "²".isdigit()
        raise CmdError(f"invalid destination URL {url!r}: bad port {port_text!r}")
    return scheme.lower(), host, int(port_text), written


KNOWN_OPTS = frozenset({"strip", "prepend", "host", "proto", "tlsskipverify", "redirect", "allow", "deny", "auth",
                        "register", "timeout", "pxyproto", "grpcservername"}) | POLICY_OPTS
_reported_opts: set[str] = set()
_reported_redirects: set[tuple[str, str]] = set()


def _note_bad_redirect(code: str, cmd: RouteCmd) -> None:
    """fabio logs a redirect= that is not a 3xx code and proxies the route; so do we (once per service/value)."""
    if (cmd.service, code) in _reported_redirects:
        return
    if len(_reported_redirects) < 10000:
        _reported_redirects.add((cmd.service, code))
    log.error("route option redirect=%r (service %s, %s line %d): a 3xx status code is expected; the redirect is "
              "ignored and the route is proxied to %s", code, cmd.service, cmd.source or "-", cmd.line, cmd.dst)


def _note_unknown_opts(opts: Mapping[str, str], service: str) -> None:
    """Unknown options are kept (and shown by /api/routes) and logged once per name, never fatal."""
    for name in opts.keys() - KNOWN_OPTS - _reported_opts:
        _reported_opts.add(name)
        log.warning("route option %r (service %s) is not known to this router; kept and ignored", name, service)


@dataclass(frozen=True, slots=True)
class _OptsSpec:
    """What a target takes from its options alone, parsed once per distinct option tuple.

    The options come from a tag's text, parsed once per distinct text (registry/tags.py), so a service's
    instances share one tuple: at 100,000 instances the table build parsed the same few option sets
    100,000 times (issue 18). `error` is the CmdError of a bad option, raised for every command with it."""

    opts: Mapping[str, str]
    strip: str
    prepend: str
    host: str
    https: bool  # proto=https
    skip: bool
    redirect: str  # the redirect= value ("" without one)
    redirect_code: int  # its 3xx code, 0 when it is not one (the route is proxied, and that is logged)
    timeout: float
    policy: TargetPolicy | None
    error: str = ""


_SPECS: dict[tuple[tuple[str, str], ...], _OptsSpec] = {}
_SPECS_MAX = 10000  # distinct option tuples kept; past that the cache starts again


def _spec(opts_items: tuple[tuple[str, str], ...], service: str) -> _OptsSpec:
    spec = _SPECS.get(opts_items)
    if spec is not None:
        return spec
    opts = dict(opts_items)
    if opts and not opts.keys() <= KNOWN_OPTS:
        _note_unknown_opts(opts, service)
    error = ""
    strip = opts.get("strip", "")
    code = opts.get("redirect", "")
    timeout = 0.0
    policy = None
    try:
        if strip and not strip.startswith("/"):
            raise CmdError(f"invalid option strip={strip!r}: must start with '/'")
        timeout = parse_duration(opts["timeout"]) if "timeout" in opts else 0.0
        try:
            access.rules_for(opts)  # validated (and cached for the proxy) now, not on the first request
        except ValueError as e:
            raise CmdError(f"invalid access rules: {e}") from None
        try:
            policy = target_policy(opts, config_duration) if opts else None
        except PolicyError as e:
            raise CmdError(f"invalid option {e}") from None
    except CmdError as e:
        error = str(e)
    spec = _OptsSpec(MappingProxyType(opts) if opts else _EMPTY_OPTS, strip, opts.get("prepend", ""),
                     opts.get("host", ""), opts.get("proto") == "https",
                     opts.get("tlsskipverify", "").lower() in ("true", "1", "t"), code,
                     int(code) if code.isascii() and code.isdigit() and 300 <= int(code) <= 399 else 0, timeout, policy, error)
    if len(_SPECS) >= _SPECS_MAX:
        _SPECS.clear()
    _SPECS[opts_items] = spec
    return spec


def make_target(cmd: RouteCmd, weight: float = 1.0) -> Target:
    """Compile a ``route add`` into a Target (weight 1.0 unless given: the builder weighs routes).
    Raises CmdError. The group of one of `make_targets`: one compile, not two that must stay alike."""
    if not cmd.dst:
        raise CmdError("source and destination must not be empty")
    return make_targets((cmd,), weight)[0]


def make_targets(cmds: Sequence[RouteCmd], weight: float) -> list[Target]:
    """`make_target` for commands that differ only in their destinations (their sources and lines aside),
    each at ``weight``: what they share (the source check, the options' spec, the Host header and
    redirect rules) is worked out once, and the common URL form ``scheme://host:port/...`` is split
    inline. Why: one service's instances are one such group, and at 100,000 instances the per-target
    work was most of the first table build (issue 18). Raises CmdError like `make_target` (the builder
    then compiles the group command by command to report the bad one)."""
    c0 = cmds[0]
    if not c0.src:
        raise CmdError("source and destination must not be empty")
    service, tags, fixed = c0.service, c0.tags, c0.weight
    spec = _spec(c0.opts, service)
    if spec.error:
        raise CmdError(spec.error)
    opts, strip, prepend, skip, timeout, policy = spec.opts, spec.strip, spec.prepend, spec.skip, spec.timeout, spec.policy
    code = spec.redirect_code
    bad_redirect = bool(spec.redirect) and not code
    https, host_dst, host_header = spec.https, spec.host == "dst", spec.host
    match = _URL_COMMON.match
    out: list[Target] = []
    append = out.append
    for cmd in cmds:
        dst = cmd.dst
        m = match(dst)
        if m is not None:
            scheme, written, host, port_text = m.groups()
            scheme = _SCHEMES.get(scheme, scheme)
            port = int(port_text)
            if port > 65535:
                raise CmdError(f"invalid destination URL {dst!r}: bad port {port_text!r}")  # _split_url's words
        else:
            scheme, host, port_or_none, written = _split_url(dst)
            port = port_or_none if port_or_none is not None else -1
        if bad_redirect:
            _note_bad_redirect(spec.redirect, cmd)
        if https and scheme == "http":
            scheme = "https"
        if port < 0:
            port = 443 if scheme in ("https", "grpcs", "wss") else 80 if scheme in ("http", "grpc", "ws") else 0
        t = _RawTarget(service, tags, opts, dst, scheme, host, port, fixed, weight, strip, prepend,
                       written if host_dst else host_header, skip, code, dst if code else "", timeout,
                       cmd.source, policy)
        t.__class__ = Target  # type: ignore[assignment]
        append(t)  # type: ignore[arg-type]
    return out
