"""Every configuration key we know: its name (fabio's), default, parser and help text.

One table, read by load() (router/config/settings.py), by scripts/gen_properties_example.py (the
example file) and scripts/gen_config_docs.py (docs/configuration.md), so the three cannot disagree.
A key marked `(ours)` in its help is not fabio's; `todo` says a key is accepted but has no effect yet.
UNSUPPORTED_PREFIXES are fabio keys we know but do not implement: warned about, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.config.addrs import listen_addr
from router.config.values import (
    choice,
    duration,
    int_range,
    list_of,
    number_range,
    parse_bool,
    parse_consul_addr,
    parse_list,
    parse_regexp,
    parse_str,
    parse_ui_color,
    positive_number,
)


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    todo: str = ""  # non-empty: accepted but not acting yet; said at startup when set and in the example file
    lenient: bool = False  # an invalid value is warned about and the default used (fabio's log.routes.format)


KEYS: tuple[Key, ...] = (
    # proxy
    Key("proxy.addr", ":9999", listen_addr("proxy.addr"),
        "listeners, fabio's syntax: addr;proto=http|https|tcp|tcp+sni|...;cs=<cert source>;rt=;wt=;it=;"
        "strictmatch=;tlsmin=;tlsmax=;tlsciphers=;pxyproto=;pxytimeout=;refresh= [,addr2;...]; "
        "it=<duration>: idle client keep-alive timeout (default 75s)"),
    Key("proxy.cs", "", parse_str,
        "certificate sources: cs=<name>;type=file|path|http|consul;cert=<path or URL>[;key=][;clientca=]"
        "[;refresh=3s][;hdr=Name: value][;caupgcn=<issuer CN>: its clientca certificates count as CAs] [,cs=...]; "
        "vault and vault-pki are refused at startup"),
    Key("proxy.readtimeout", "0", duration(zero="no timeout"), "default of the listeners' rt= (read timeout)"),
    Key("proxy.writetimeout", "0", duration(zero="no timeout"), "default of the listeners' wt= (write timeout)"),
    Key("proxy.strategy", "p2c", choice("p2c", "rnd", "rr"),
        "how a target is picked: p2c (the less loaded of two random ones: latency estimate x requests in flight; "
        "ours, the default), rnd (random, fabio's default) or rr (round robin); weights hold for all three"),
    Key("proxy.matcher", "prefix", choice("prefix", "iprefix", "glob"), "how paths are matched"),
    Key("proxy.noroutestatus", "404", int_range(100, 999), "status when no route matches"),
    Key("proxy.dialtimeout", "1s", duration(zero="no timeout"),
        "timeout for connecting to an upstream, shared by a request's connects (fabio: 30s)"),
    Key("proxy.responseheadertimeout", "0", duration(zero="no timeout"),
        "timeout for the upstream's response headers"),
    Key("proxy.keepalivetimeout", "0", duration(hi=32767, zero="no keep-alive probes", hi_why=" (Linux's limit)"),
        "TCP keep-alive idle time for upstream connections (whole seconds, at least 1s)"),
    Key("proxy.idleconntimeout", "15s", duration(zero="no limit"), "how long an idle upstream connection is kept"),
    Key("proxy.maxconn", "10000", int_range(0), "idle upstream connections kept per host (0: 2, as Go's default)"),
    Key("proxy.shutdownwait", "0", duration(), "how long to keep serving after SIGTERM"),
    Key("proxy.deregistergraceperiod", "0", duration(), "wait after deregistering before shutdown"),
    Key("proxy.localip", "", parse_str, "this host's IP, used in Forwarded: by="),
    Key("proxy.header.clientip", "", parse_str, "request header set to the client's IP (empty = off)"),
    Key("proxy.header.tls", "", parse_str, "request header set on TLS requests, removed from plain ones"),
    Key("proxy.header.tls.value", "", parse_str, "value of proxy.header.tls"),
    Key("proxy.header.requestid", "", parse_str, "request header set to a new UUID per request (empty = off)"),
    Key("proxy.header.sts.maxage", "0", int_range(0, zero="no HSTS header"), "HSTS max-age (seconds) on TLS responses"),
    Key("proxy.header.sts.subdomains", "false", parse_bool, "add includeSubdomains to the HSTS header"),
    Key("proxy.header.sts.preload", "false", parse_bool, "add preload to the HSTS header"),
    Key("proxy.auth", "", parse_str, "auth schemes: name=a;type=basic;file=<htpasswd>;realm=r;refresh=30s[,...]"),
    Key("proxy.workers", "0", int_range(0, 256), "number of proxy worker processes, 0 = one per core (ours)"),
    Key("proxy.maxheaderbytes", "1048576", int_range(1024, 1 << 30),
        "largest request head (request line + headers) in bytes; larger is answered 431 (ours)"),
    Key("proxy.grpcmaxrxmsgsize", "4194304", int_range(0, (1 << 31) - 1),
        "largest gRPC message in bytes the router takes, from clients and from instances; larger ends the call with "
        "RESOURCE_EXHAUSTED (8), as fabio"),
    Key("proxy.grpcmaxtxmsgsize", "4194304", int_range(0, (1 << 31) - 1),
        "largest gRPC message in bytes the router sends to a client; larger ends the call with RESOURCE_EXHAUSTED "
        "(8), as fabio"),
    Key("proxy.grpcshutdowntimeout", "2s", duration(zero="close them at once"),
        "at shutdown, how long gRPC calls still open after proxy.shutdownwait may go on before their connections "
        "are closed (as fabio's graceful stop of its gRPC server)"),
    Key("proxy.retry.attempts", "3", int_range(1, 16),
        "tries per request (the first, retries and hedges), each on another instance of the route (ours)"),
    Key("proxy.retry.budget", "0.2", number_range(0, 10),
        "retries and hedges allowed per request of a route, over the last 10s (ours)"),
    Key("proxy.retry.budget.min", "10", number_range(0, 1e6),
        "retries and hedges per second a route may always make, on top of proxy.retry.budget (ours)"),
    Key("proxy.retry.pertrytimeout", "250ms", duration(zero="no per-try timeout, no hedged requests"),
        "an idempotent request without a body and without headers after this long (at least 4x the route's "
        "latency estimate) is also sent to another instance; the first answer wins (ours)"),
    Key("proxy.stall.timeout", "1s", duration(zero="no stall detection"),
        "when no response-header timeout applies: a try waits at most this long (or 4x the route's latency "
        "estimate) on an instance that sent no response headers to 3 or more requests for as long; then 504, "
        "or another instance for an idempotent request. A slow answer from an instance that answers others is "
        "never cut (ours)"),
    Key("proxy.retry.buffer", "65536", int_range(0, 1 << 30, zero="off"),
        "bytes of an idempotent request's response held back until complete, so a reset before then is retried "
        "elsewhere (ours)"),
    Key("proxy.hedge.delay", "25ms", duration(zero="no connect hedging"),
        "a connect not complete after this long (at least 4x the average connect time) gets a second connect to "
        "another instance; the request goes on the first connection (ours)"),
    Key("proxy.lb.decay", "1s", duration(lo=0.001),
        "time constant of p2c's latency estimate; an instance without answers for this long is probed again (ours)"),
    Key("proxy.maxinflight", "0", int_range(0, zero="no limit"),
        "requests in flight to one instance, per proxy process; beyond it others are picked, then 503 with "
        "Retry-After (ours)"),
    Key("proxy.eject.failures", "3", int_range(0, 1000),
        "consecutive failures (connect, reset, per-try timeout, 5xx) after which an instance gets no traffic for a "
        "while (0 = never) (ours)"),
    Key("proxy.eject.duration", "1s", duration(lo=0.001),
        "how long a first ejection lasts; each ejection in a row lasts twice as long, up to proxy.eject.maxduration; "
        "to turn ejection off, set proxy.eject.failures=0 (ours)"),
    Key("proxy.eject.maxduration", "2s", duration(lo=0.001),
        "the longest ejection: an instance that is back gets traffic again within this (ours)"),
    Key("proxy.eject.maxshare", "0.5", number_range(0, 1),
        "share of a route's instances that may be ejected at once (at least one of two or more) (ours)"),
    Key("proxy.gzip.contenttype", "", parse_regexp,
        "regexp of response content types to compress when the client accepts it (empty = off); "
        "zstd and br as well as gzip (ours), and the route option compress= turns it on or off per route"),
    Key("proxy.compress.minsize", "1024", int_range(0),
        "responses with a Content-Length below this many bytes are not compressed (ours)"),
    Key("proxy.maxbodybytes", "0", int_range(0, zero="no limit"),
        "largest request body in bytes, answered 413 above it; the route option maxbody= overrides it (ours)"),
    # registry
    Key("registry.backend", "consul", choice("consul", "static", "file"), "where routes come from"),
    Key("registry.timeout", "10s", duration(zero="open at once"),
        "how long the proxy listeners wait for the first routing table at startup; then they open anyway "
        "(503 until a table loads) and the registry is still retried (fabio exits instead)"),
    Key("registry.retry", "500ms", duration(),
        "retry interval at startup: the longest wait between two tries of the first read of Consul (the first "
        "retry comes after 0.1 s, then the wait doubles up to this; values below 100ms count as 100ms)"),
    Key("registry.static.routes", "", parse_str, "route commands for registry.backend=static"),
    Key("registry.static.noroutehtml", "", parse_str,
        "HTML page answered when no route matches, for registry.backend=static"),
    Key("registry.file.path", "", parse_str, "route command file for registry.backend=file"),
    Key("registry.consul.addr", "localhost:8500", parse_consul_addr,
        "Consul agent address: host:port, http://host:port or https://host:port (scheme in any case)"),
    Key("registry.consul.token", "", parse_str, "Consul ACL token", secret=True),
    Key("registry.consul.tls.keyfile", "", parse_str, "client key for an https:// Consul"),
    Key("registry.consul.tls.certfile", "", parse_str, "client certificate for an https:// Consul"),
    Key("registry.consul.tls.cafile", "", parse_str, "CA file to verify an https:// Consul"),
    Key("registry.consul.tls.capath", "", parse_str, "directory of CA files to verify an https:// Consul"),
    Key("registry.consul.tls.insecureskipverify", "false", parse_bool, "do not verify Consul's certificate"),
    Key("registry.consul.kvpath", "/fabio/config", parse_str, "KV prefix of the manual overrides"),
    Key("registry.consul.noroutehtmlpath", "/fabio/noroute.html", parse_str, "KV key of the no-route page"),
    Key("registry.consul.tagprefix", "urlprefix-", parse_str, "prefix of the route tags"),
    Key(
        "registry.consul.service.status",
        "passing",
        list_of("passing", "warning", "critical", "unknown"),
        "check statuses that make an instance routable",
    ),
    Key("registry.consul.checksRequired", "one", choice("one", "all"), "one passing check or all of them"),
    Key("registry.consul.unrunhold", "45s", duration(zero="off"),
        "how long a routed instance keeps its route while a check has not run since its agent restarted (ours)"),
    Key("registry.consul.requireConsistent", "true", parse_bool, "consistent reads from Consul"),
    Key("registry.consul.allowStale", "false", parse_bool, "stale reads from Consul"),
    Key("registry.consul.pollInterval", "0", duration(zero="blocking queries"), "poll instead of blocking queries (0 = block)", todo='not implemented yet: blocking queries are always used'),
    Key("registry.consul.register.enabled", "true", parse_bool, "register the router itself in Consul"),
    Key("registry.consul.register.name", "fabio", parse_str, "service name of the self-registration"),
    Key("registry.consul.register.addr", "", parse_str, "address of the self-registration (default ui.addr)"),
    Key("registry.consul.register.tags", "", parse_list, "tags of the self-registration"),
    Key("registry.consul.register.checkInterval", "1s", duration(lo=0.001), "health check interval"),
    Key("registry.consul.register.checkTimeout", "3s", duration(zero="Consul's default"), "health check timeout"),
    Key("registry.consul.register.checkTLSSkipVerify", "false", parse_bool, "skip TLS verification in the check"),
    Key("registry.consul.register.checkDeregisterCriticalServiceAfter", "90m", parse_str,
        "accepted for compatibility; no effect in fabio 1.7.3 either"),
    Key("registry.consul.wait", "60s", duration(lo=0.001, hi=600, hi_why=" (Consul's maximum)"),
        "blocking query wait time (ours; Consul's default is 5m)"),
    Key("registry.consul.maxrate", "20", positive_number,
        "blocking queries per second per watch whose answers bring no new index, after a burst of 2 (ours; real changes are not held)"),
    Key("registry.consul.hotwatches", "64", int_range(0, 150, zero="none"),
        "services changed in the last minute that get a blocking query of their own, so changes no bulk watch "
        "shows reach the table in ms (ours); the router holds up to twice this many of Consul's connections "
        "from its address (Consul's limits.http_max_conns_per_client, 200 by default), plus about 40"),
    # ui
    Key("ui.addr", ":9998", listen_addr("ui.addr"),
        "listen address of the admin UI: one listener, plain HTTP, or HTTPS with cs=<source from proxy.cs> "
        "(and strictmatch=, tlsmin=, tlsmax=, tlsciphers= as on proxy.addr), it= idle keep-alive timeout (default 5s); "
        "other options are warned about and ignored"),
    Key("ui.access", "rw", choice("ro", "rw"), "ro closes the override editor and its API"),
    Key("ui.health.maxsyncage", "0", duration(zero="off"),
        "/health answers 503 when the last Consul answer is older than this (must exceed wait*17/16) (ours)"),
    Key("ui.title", "", parse_str, "title shown in the UI"),
    Key("ui.color", "light-green", parse_ui_color, "colour of the UI's navigation bar (a Materialize colour class, as in fabio, or #rrggbb)"),
    Key("ui.auth.htpasswd", "", parse_str, "htpasswd file (bcrypt, $apr1$, $1$ or {SHA} entries) for override saves from non-loopback (ours)"),
    Key("ui.auth.token", "", parse_str, "bearer token for override saves from non-loopback (ours)", secret=True),
    Key("ui.auth.loopback", "true", parse_bool,
        "trust loopback peers to save overrides without credentials; set false behind a local reverse proxy (ours)"),
    # logs
    Key("log.level", "INFO", choice("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", any_case=True),
        "log level (upper-cased first, as in fabio)"),
    Key("log.access.target", "", choice("", "stdout"), "access log target: empty (off) or stdout"),
    Key("log.access.format", "common", parse_str, "access log format: common, combined or a template of $field names"),
    Key("log.routes.format", "delta", choice("delta", "all", "detail"),
        "how route changes are logged; any other value is warned about and delta is used, as in fabio",
        lenient=True),
    # matching
    Key("glob.matching.disabled", "false", parse_bool, "match hosts exactly, without wildcards"),
    Key("glob.cache.size", "1000", int_range(0), "size of the glob cache", todo='no effect: glob patterns are compiled once per table build'),
)

KEYS_BY_NAME: Mapping[str, Key] = {k.name: k for k in KEYS}
KEYS_BY_LOWER: Mapping[str, Key] = {k.name.lower(): k for k in KEYS}

# fabio keys we know but do not implement yet: accepted with a clear warning, never fatal.
UNSUPPORTED_PREFIXES = (
    "proxy.tls",
    "proxy.flushinterval",
    "proxy.globalflushinterval",
    "proxy.grpc",
    "proxy.log.routes",  # deprecated in fabio too: use log.routes.format
    "registry.consul.serviceMonitors",
    "registry.consul.namespace",
    "registry.custom",
    "registry.file.noroutehtmlpath",
    "metrics.",
    "runtime.",
    "profile.",
    "tracing.",
    "bgp.",
    "ui.routingtable",
    "ui.path",
    "insecure",
)

SECRET_HINTS = ("token", "password", "secret", "key")
