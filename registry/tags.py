"""`urlprefix-` tags of one instance -> route commands, the way fabio builds them (pure).

`urlprefix-host/path opt=v opt2` -> `route add <svc> host/path http://addr:port/ [weight w] tags "<other
tags>" opts "opt=v opt2"`. A malformed tag is returned as an error naming the service and instance; it
never affects the instance's other tags or other services.

Route forms, as in fabio 1.7.3 (registry/consul/routecmd.go): `host/path` gets `$DC`/`${DC}` expanded
and the host lowercased; `/path` is `host/path` with an empty host; `:port` (TCP) and a route without
any slash (`mysite.com`, `1.1.1.1:999`) are taken verbatim, and the table reads a slash-less route as
host `mysite.com`, path `/`. (Older fabio releases refused slash-less tags with "You need to have a
trailing slash!"; 1.7.3 accepts them.) A verbatim route that contains a variable is refused here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from registry.consul.health import Instance
from router.table.routecmd import RouteCmd, new_cmd

_VAR = re.compile(r"\$(\{(\w*)\}|(\w+))")
_PROTOS = {"https": "https://", "tcp": "tcp://", "grpc": "grpc://", "grpcs": "grpcs://", "http": "http://"}


@dataclass(frozen=True, slots=True)
class TagError:
    service: str
    instance: str
    tag: str
    reason: str

    def __str__(self) -> str:
        return f"service {self.service} instance {self.instance}: tag {self.tag!r}: {self.reason}"


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$DC` / `${DC}` from the agent's datacenter; unknown variables expand to "" as in fabio."""
    if "$" not in text:  # nearly every tag: no regex pass
        return text
    return _VAR.sub(lambda m: env.get(m.group(2) if m.group(2) is not None else m.group(3), ""), text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_EMPTY = "empty route: expected e.g. urlprefix-/path or urlprefix-host.com/path"
_BAD_SRC = re.compile(r"[\"'\x00-\x20\x7f]")  # quotes, controls, space


@dataclass(frozen=True, slots=True)
class _Parsed:
    """What one route tag says, whatever the instance: the route's source and how to build its target."""

    src: str
    scheme: str
    dst_path: str
    weight: float
    redirect: str
    opts: tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=65536)
def _parse(body: str, env: tuple[tuple[str, str], ...]) -> _Parsed | str:
    """One tag after the prefix -> its parts, or why it is bad (empty: `_EMPTY`). Cached: every instance of
    a service carries the same tags, and a re-read parses them again (issue 18: at 100,000 instances the
    tag parsing was a third of building the routes)."""
    src, _, opt_text = body.partition(" ")
    if not src:
        return _EMPTY
    if "/" in src and not src.startswith(":"):
        host, _, path = src.partition("/")
        src = expand(host, dict(env)).lower() + "/" + expand(path, dict(env))
    elif _VAR.search(src):
        # fabio 1.7.3 takes `:port` and slash-less routes verbatim, so `urlprefix-$DC` would route the
        # literal host "$dc", which no client sends: report it instead (ours).
        return ("variables such as $DC are expanded only in the host/path form: add a slash, "
                "e.g. urlprefix-$DC.example.com/")
    if _BAD_SRC.search(src):
        return "route contains quotes or control characters"
    scheme = "http://"
    dst_path = "/"
    weight = 0.0
    redirect = ""
    opts: list[tuple[str, str]] = []
    for word in opt_text.split():
        key, eq, value = word.partition("=")
        if key == "proto":
            if value not in _PROTOS:
                return f"unknown proto={value!r}: expected one of {', '.join(_PROTOS)}"
            scheme = _PROTOS[value]
            dst_path = "/" if value == "http" else ""
        elif key == "weight":
            try:
                weight = float(value)
                if not 0 <= weight < float("inf"):
                    raise ValueError
            except ValueError:
                return f"weight={value!r} is not a non-negative number"
        elif key == "redirect":
            code, comma, url = value.partition(",")
            if not comma or not (code.isascii() and code.isdigit()) or not url:
                return f"redirect={value!r}: expected redirect=<3xx code>,<url>"
            redirect = url
            opts.append(("redirect", code))
        elif any(c in word for c in "\"'"):
            return f"option {word!r} contains a quote"
        else:
            opts.append((key, value if eq else ""))
    return _Parsed(src, scheme, dst_path, weight, redirect, tuple(opts))


@functools.lru_cache(maxsize=16384)
def _route_tags(tags: tuple[str, ...], prefix: str, env: tuple[tuple[str, str], ...]
                ) -> tuple[tuple[str, ...], tuple[tuple[str, _Parsed | str], ...]]:
    """An instance's tags -> its other tags, and each route tag with its parse. Cached per tag tuple: a
    service's instances carry the same tags (issue 18: 100,000 instances, a few thousand tag tuples)."""
    stripped = [t.strip() for t in tags]  # fabio trims every tag first
    other = tuple(t for t in stripped if t and not t.startswith(prefix))
    return other, tuple((t, _parse(t[len(prefix):].strip(), env)) for t in stripped if t.startswith(prefix))


def route_cmds(
    inst: Instance, prefix: str = "urlprefix-", env: Mapping[str, str] | None = None
) -> tuple[list[RouteCmd], list[TagError]]:
    """Route commands for every route tag of one healthy instance, plus one error per bad tag."""
    other_tags, routes = _route_tags(inst.tags, prefix, tuple(sorted(env.items())) if env else ())
    cmds: list[RouteCmd] = []
    errors: list[TagError] = []
    if not routes:
        return cmds, errors
    addr = join_host_port(inst.address, inst.port)
    source = f"service:{inst.service}/{inst.id}"
    for tag, p in routes:
        if p is not _EMPTY and (not inst.address or inst.port <= 0):
            p = "instance has no address or port"
        if isinstance(p, str):
            errors.append(TagError(inst.service, inst.id, tag, p))
            continue
        cmds.append(new_cmd("add", inst.service, p.src, p.redirect or f"{p.scheme}{addr}{p.dst_path}", p.weight,
                            other_tags, p.opts, 0, source))
    return cmds, errors
