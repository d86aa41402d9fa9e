"""fabio-compatible configuration: the same property names, defaults and precedence.

Sources, strongest first: command-line flags (`-key value` / `-key=value`), environment variables
(`FABIO_<KEY>` then `<KEY>`, upper-cased, dots as underscores), the properties file given with `-cfg`,
then the built-in defaults. A value that does not parse, or is out of its key's range, stops startup with
a message naming the key, the value and what the key accepts; a key nobody knows is warned about and
ignored, so a fabio.properties from a newer fabio still starts us. Where fabio is lenient we are too:
`log.level` in any case, an unknown `log.routes.format` warned about and replaced by `delta`. Listener
options we do not act on, and listeners after the first, are warned about; a listener that would need
TLS, TCP or gRPC (`proto=https`, `cs=`) stops startup rather than serving plain HTTP on it.

This module is the loading and its precedence (flags, environment, properties file, defaults) and the
checks across keys; the keys themselves are in router/config/keys.py, the parsers of their values in
router/config/values.py and router/config/addrs.py (the listen addresses).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router import __version__
from router.config import listeners as _listeners
from router.config.addrs import LISTENER_DURATION, listener_warnings, proxy_listeners
from router.config.keys import KEYS, KEYS_BY_LOWER, KEYS_BY_NAME, SECRET_HINTS, UNSUPPORTED_PREFIXES
from router.config.values import parse_bool, redact_userinfo


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and the accepted values."""


def read_properties(text: str) -> dict[str, str]:
    """Java/magiconair properties: `key = value` or `key: value`, `#`/`!` comments, `\\` continuation."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + lines[i].strip()
            i += 1
        m = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        else:
            out[line] = ""
    return out


@dataclass(frozen=True)
class Config:
    """Parsed configuration; `cfg["proxy.addr"]` gives the typed value."""

    values: Mapping[str, Any]
    raw: Mapping[str, str]
    origin: Mapping[str, str]  # key -> "default" | "file" | "env" | "flag"
    warnings: tuple[str, ...] = ()
    listeners: tuple[_listeners.Listener, ...] = ()  # proxy.addr with its cert sources (proxy.cs) resolved
    ui_listener: _listeners.Listener | None = None  # ui.addr with its cert source (HTTPS with a cs=)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def redacted(self) -> dict[str, str]:
        """Raw values with every secret replaced, for the UI and /api/config.

        Secret keys (by flag or by name) are replaced whole; in every other value the password of a URL's
        userinfo is (`https://user:pw@consul:8501` -> `https://user:<redacted>@consul:8501`).
        """
        return {name: shown(name, value) for name, value in sorted(self.raw.items())}


def shown(name: str, value: str) -> str:
    """A raw value as it may be displayed or logged: secrets replaced (see Config.redacted)."""
    key = KEYS_BY_NAME.get(name)
    secret = (key.secret if key else False) or any(h in name.lower() for h in SECRET_HINTS)
    if secret and value:
        return "<redacted>"
    return redact_userinfo(value)


@dataclass
class CommandLine:
    cfg_path: str | None
    flags: dict[str, str]
    version: bool


def parse_args(argv: Iterable[str]) -> CommandLine:
    """fabio's command line: `-cfg path`, `-v`, and `-<key> value` / `-<key>=value` for every property."""
    args = list(argv)
    cfg_path: str | None = None
    flags: dict[str, str] = {}
    # fabio looks for -v/--version among all arguments before anything else: `-a -v -b` prints the version
    version = any(a in ("-v", "--version", "-version") for a in args)
    if version:
        return CommandLine(None, {}, True)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if not a.startswith("-") or a in ("-", "--"):
            raise ConfigError(f"unexpected argument {a!r}; flags look like -proxy.addr :9999")
        name = a.lstrip("-")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("v", "version"):
            version = True
            continue
        if value is None:
            if i >= len(args):
                raise ConfigError(f"flag -{name} needs a value")
            value = args[i]
            i += 1
        value = value.strip().strip('"').strip("'") if name == "cfg" else value
        if name == "cfg":
            if not value:  # fabio: `-cfg=''` is an invalid or missing path, not "no file"
                raise ConfigError("-cfg needs the path of a properties file")
            cfg_path = value
        else:
            flags[name] = value
    return CommandLine(cfg_path, flags, version)


def _canonical(name: str) -> str | None:
    key = KEYS_BY_NAME.get(name) or KEYS_BY_LOWER.get(name.lower())
    return key.name if key else None


def _is_unsupported(name: str) -> bool:
    low = name.lower()
    return any(low.startswith(p.lower()) for p in UNSUPPORTED_PREFIXES)


def load(
    argv: Iterable[str] = (), env: Mapping[str, str] | None = None, properties: Mapping[str, str] | None = None
) -> Config:
    """Build the config from flags, environment and the properties file (read from -cfg if not given)."""
    env = os.environ if env is None else env
    cmd = parse_args(argv)
    if properties is None:
        properties = {}
        if cmd.cfg_path and re.match(r"(?i)https?://", cmd.cfg_path):
            raise ConfigError(
                f"-cfg {redact_userinfo(cmd.cfg_path)}: loading the properties from a URL is not supported "
                "(fabio can); download the file and give its path, or set the keys as flags or FABIO_* variables")
        if cmd.cfg_path:
            try:
                with open(cmd.cfg_path, encoding="utf-8") as f:
                    properties = read_properties(f.read())
            except OSError as e:
                raise ConfigError(f"cannot read config file {cmd.cfg_path}: {e.strerror}") from None

    warnings: list[str] = []
    raw: dict[str, str] = {k.name: k.default for k in KEYS}
    origin: dict[str, str] = {k.name: "default" for k in KEYS}

    def take(source: str, items: Mapping[str, str]) -> None:
        for name, value in items.items():
            canon = _canonical(name)
            if canon is None:
                if _is_unsupported(name):
                    warnings.append(f"{source}: {name} is a fabio key that this router does not support yet; ignored")
                else:
                    warnings.append(f"{source}: unknown key {name}; ignored")
                continue
            raw[canon] = value
            origin[canon] = source

    take("file", properties)
    upper_env = {k.upper(): v for k, v in env.items()}
    from_env: dict[str, str] = {}
    for key in KEYS:
        env_name = key.name.replace(".", "_").upper()
        for candidate in ("FABIO_" + env_name, env_name):
            if candidate in upper_env:
                from_env[key.name] = upper_env[candidate]
                break
    take("env", from_env)
    take("flag", cmd.flags)

    for key in KEYS:
        if key.todo and origin[key.name] != "default" and raw[key.name] != key.default:
            warnings.append(f"{origin[key.name]}: {key.name} is {key.todo}")

    values: dict[str, Any] = {}
    for key in KEYS:
        try:
            values[key.name] = key.parse(raw[key.name])
        except ValueError as e:
            problem = f"invalid value {shown(key.name, raw[key.name])!r} for {key.name} (from {origin[key.name]})"
            if not key.lenient:
                raise ConfigError(f"{problem}: expected {e}") from None
            warnings.append(f"{problem}: expected {e}; using {key.default} (as fabio does)")
            values[key.name] = key.parse(key.default)
    for name in ("proxy.addr", "ui.addr"):
        warnings += [f"{origin[name]}: {w}" for w in listener_warnings(name, raw[name])]
    if values["registry.static.noroutehtml"] and values["registry.backend"] != "static":
        warnings.append(f"{origin['registry.static.noroutehtml']}: registry.static.noroutehtml has an effect only "
                        "with registry.backend=static (as in fabio); ignored")
    if values["registry.consul.requireConsistent"] and values["registry.consul.allowStale"] and (
        origin["registry.consul.requireConsistent"] != "default"
    ):
        raise ConfigError(
            "registry.consul.requireConsistent and registry.consul.allowStale cannot both be true; set one to false"
        )
    if values["registry.consul.allowStale"]:
        values["registry.consul.requireConsistent"] = False
    age, wait = values["ui.health.maxsyncage"], values["registry.consul.wait"]
    if age and age <= wait * 17 / 16:
        # A healthy idle blocking query answers up to wait + wait/16 after the previous answer.
        raise ConfigError(f"ui.health.maxsyncage ({age:g}s) must exceed registry.consul.wait * 17/16 ({wait * 17 / 16:g}s)")
    if values["registry.backend"] == "consul" and not values["registry.consul.addr"]:
        raise ConfigError("registry.consul.addr is empty: expected host:port, http://host:port or https://host:port")
    if values["registry.backend"] == "file" and not values["registry.file.path"]:
        raise ConfigError("registry.file.path is required when registry.backend=file")
    try:
        sources = _listeners.parse_cert_sources(raw["proxy.cs"], LISTENER_DURATION)
    except ValueError as e:
        raise ConfigError(f"invalid proxy.cs (from {origin['proxy.cs']}): {e}") from None
    try:
        listeners = proxy_listeners(raw["proxy.addr"], sources, read_timeout=values["proxy.readtimeout"],
                                    write_timeout=values["proxy.writetimeout"])
    except ValueError as e:
        raise ConfigError(f"invalid proxy.addr (from {origin['proxy.addr']}): {e}") from None
    try:
        [(ui_addr, ui_opts)] = _listeners.split_kv_list(raw["ui.addr"])
        ui_listener = _listeners.parse_listener(ui_addr, ui_opts, sources, LISTENER_DURATION, parse_bool)
    except ValueError as e:
        raise ConfigError(f"invalid ui.addr (from {origin['ui.addr']}): {e}") from None
    return Config(values=values, raw=raw, origin=origin, warnings=tuple(warnings), listeners=listeners,
                  ui_listener=ui_listener)


def version_text() -> str:
    return f"{__version__}"
