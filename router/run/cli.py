"""Entry point: `python -m router -cfg fabio.properties [-key value ...]`: configuration errors exit 2,
a port that cannot be bound exits 1."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from router import __version__
from router.config.settings import ConfigError, load, parse_args
from router.run.assemble import LEVELS
from router.run.router import Router
from router.run.workers import tune_gc

log = logging.getLogger("router")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if parse_args(argv).version:
            print(__version__)
            return 0
        cfg = load(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=LEVELS[cfg["log.level"]], format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Consul request is noise
    for w in cfg.warnings:
        log.warning("config: %s", w)
    log.info("consul-router %s: proxy on %s:%d, ui on %s:%d, registry %s", __version__, *cfg["proxy.addr"],
             *cfg["ui.addr"], cfg["registry.backend"])
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    tune_gc()
    try:
        router = Router(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        runner(router.serve())
    except ConfigError as e:  # found only once serving starts: a certificate source that cannot be loaded
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
