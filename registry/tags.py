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

import re
from collections.abc import Mapping
from dataclasses import dataclass

from registry.consul.health import Instance
from router.table.routecmd import RouteCmd

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
    return _VAR.sub(lambda m: env.get(m.group(2) if m.group(2) is not None else m.group(3), ""), text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def route_cmds(
    inst: Instance, prefix: str = "urlprefix-", env: Mapping[str, str] | None = None
) -> tuple[list[RouteCmd], list[TagError]]:
    """Route commands for every route tag of one healthy instance, plus one error per bad tag."""
    env = env or {}
    tags = [t.strip() for t in inst.tags]  # fabio trims every tag first
    other_tags = tuple(t for t in tags if t and not t.startswith(prefix))
    cmds: list[RouteCmd] = []
    errors: list[TagError] = []
    addr = join_host_port(inst.address, inst.port)
    for tag in tags:
        if not tag.startswith(prefix):
            continue

        def bad(reason: str, tag: str = tag) -> None:
            errors.append(TagError(inst.service, inst.id, tag, reason))

        body = tag[len(prefix) :].strip()
        src, _, opt_text = body.partition(" ")
        if not src:
            bad("empty route: expected e.g. urlprefix-/path or urlprefix-host.com/path")
            continue
        if not inst.address or inst.port <= 0:
            bad("instance has no address or port")
            continue
        if "/" in src and not src.startswith(":"):
            host, _, path = src.partition("/")
            src = expand(host, env).lower() + "/" + expand(path, env)
        elif _VAR.search(src):
            # fabio 1.7.3 takes `:port` and slash-less routes verbatim, so `urlprefix-$DC` would route the
            # literal host "$dc", which no client sends: report it instead (ours).
            bad("variables such as $DC are expanded only in the host/path form: add a slash, "
                "e.g. urlprefix-$DC.example.com/")
            continue
        if any(c in src for c in "\"'") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in src):
            bad("route contains quotes or control characters")
            continue
        scheme = "http://"
        dst_path = "/"
        weight = 0.0
        redirect = ""
        opts: list[tuple[str, str]] = []
        failed = False
        for word in opt_text.split():
            key, eq, value = word.partition("=")
            if key == "proto":
                if value not in _PROTOS:
                    bad(f"unknown proto={value!r}: expected one of {', '.join(_PROTOS)}")
                    failed = True
                    break
                scheme = _PROTOS[value]
                dst_path = "/" if value == "http" else ""
            elif key == "weight":
                try:
                    weight = float(value)
                    if not 0 <= weight < float("inf"):
                        raise ValueError
                except ValueError:
                    bad(f"weight={value!r} is not a non-negative number")
                    failed = True
                    break
            elif key == "redirect":
                code, comma, url = value.partition(",")
                if not comma or not code.isdigit() or not url:
                    bad(f"redirect={value!r}: expected redirect=<3xx code>,<url>")
                    failed = True
                    break
                redirect = url
                opts.append(("redirect", code))
            elif any(c in word for c in "\"'"):
                bad(f"option {word!r} contains a quote")
                failed = True
                break
            else:
                opts.append((key, value if eq else ""))
        if failed:
            continue
        dst = redirect or f"{scheme}{addr}{dst_path}"
        cmds.append(
            RouteCmd(
                op="add",
                service=inst.service,
                src=src,
                dst=dst,
                weight=weight,
                tags=other_tags,
                opts=tuple(opts),
                source=f"service:{inst.service}/{inst.id}",
            )
        )
    return cmds, errors
