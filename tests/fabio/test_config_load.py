"""fabio's config/load_test.go, row by row: flags, environment, properties file and their precedence
(TestLoad). Pure rows on router/config/settings.py (and router/proxy/auth.py for `proxy.auth`, which we
read when the proxy is built).

fabio's rows compare its whole Config struct with the defaults plus the row's change; here the whole set
of typed values is compared with the defaults plus the row's change, key by key, so a row also fails if
anything else moved. The fabio files and URL of a row (`/tmp/fabio-config-test`, a test server) become a
file in pytest's tmp dir and, for the URL, a real HTTP server.
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from router.config.settings import ConfigError, load, parse_args
from router.proxy.auth import parse_schemes
from tests.fabio.rows import Outcome, differs, row, table

FILE = "config/load_test.go"

# what a difference of a row is, in docs/compat.md's words
NOT_YET = "These are accepted in `fabio.properties`, flags and the environment, and startup logs a warning naming"
ENUM = "Values with a fixed set of choices"
URL = "A configuration URL (`-cfg http(s)://...`)"
LISTEN_STRICT = "a number that is no TLS version (`tlsmax=0x305`)"
VAULT = "`type=vault` and `type=vault-pki` stop startup with a message"


@dataclass(frozen=True)
class Version:
    """fabio's Load returns no config: the version is printed."""


@dataclass(frozen=True)
class Values:
    """Load succeeds; every value is the default except these (our key -> typed value)."""

    changed: dict[str, Any] = field(default_factory=dict)
    silent: str = ""  # no warning may name this (a feature that acts on the key, not just accepts it)
    ui_cs: str = ""  # the UI listener is HTTPS with this cert source


@dataclass(frozen=True)
class Warned:
    """Load succeeds with a warning naming `key`, which has no effect (every value the default but `changed`)."""

    key: str
    changed: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Error:
    """Load stops with a message naming each of `words`."""

    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Auth:
    """The `proxy.auth` value parses to one basic scheme `name` with `realm`, or fails naming `error`."""

    name: str = ""
    realm: str = ""
    error: str = ""


ADDR = ("0.0.0.0", 5555)
MAIN = [
    row("-v", ["-v"], {}, None, Version()),
    row("--version", ["--version"], {}, None, Version()),
    row("-v with other args", ["-a", "-v", "-b"], {}, None, Version()),
    row("--version with other args", ["-a", "--version", "-b"], {}, None, Version()),
    row("default config", [], {}, None, Values()),
    row("-insecure=true", ["-insecure=true"], {}, None, "Insecure=true", outcome=differs(NOT_YET, Warned("insecure"))),
    row("-profile.mode foo", ["-profile.mode", "foo"], {}, None, "ProfileMode=foo",
        outcome=differs(NOT_YET, Warned("profile.mode"))),
    row("-profile.path foo", ["-profile.path", "foo"], {}, None, "ProfilePath=foo",
        outcome=differs(NOT_YET, Warned("profile.path"))),
    row("-proxy.addr :5555", ["-proxy.addr", ":5555"], {}, None, Values({"proxy.addr": ADDR})),
    row("-proxy.addr :5555;proto=http", ["-proxy.addr", ":5555;proto=http"], {}, None, Values({"proxy.addr": ADDR})),
    row("-proxy.addr :5555;proto=tcp", ["-proxy.addr", ":5555;proto=tcp"], {}, None, Values({"proxy.addr": ADDR})),
    row("-proxy.addr :5555;proto=tcp+sni", ["-proxy.addr", ":5555;proto=tcp+sni"], {}, None,
        Values({"proxy.addr": ADDR})),
    row("-proxy.addr :5555;proto=grpc", ["-proxy.addr", ":5555;proto=grpc"], {}, None, Values({"proxy.addr": ADDR})),
    row("-proxy.addr with tls configs",
        ["-proxy.addr", ':5555;rt=1s;wt=2s;tlsmin=0x0300;tlsmax=0x305;tlsciphers="0x123,0x456"'], {}, None,
        Values({"proxy.addr": ADDR}, silent="listener option"),
        outcome=differs(LISTEN_STRICT, Error(("proxy.addr", "tlsmax= must be a TLS version", "0x305")))),
    row("-proxy.addr with named tls configs",
        ["-proxy.addr", ':5555;rt=1s;wt=2s;tlsmin=tls10;tlsmax=TLS11;'
                        'tlsciphers="TLS_RSA_WITH_RC4_128_SHA,tls_ecdhe_ecdsa_with_aes_256_gcm_sha384"'], {}, None,
        Values({"proxy.addr": ADDR}, silent="listener option")),
    *[row(f"-proxy.addr with {kind} cert source", ["-proxy.addr", ":5555;cs=name", "-proxy.cs",
                                                   f"cs=name;type={kind};cert=value"], {}, None,
          Values({"proxy.addr": ADDR, "proxy.cs": f"cs=name;type={kind};cert=value"}))
      for kind in ("file", "path", "http", "consul")],
    row("-proxy.addr with vault cert source", ["-proxy.addr", ":5555;cs=name", "-proxy.cs",
                                               "cs=name;type=vault;cert=value"], {}, None,
        Values({"proxy.addr": ADDR}), outcome=differs(VAULT, Error(("proxy.cs", "type=vault", "no Vault server")))),
    row("-proxy.addr with vault-pki cert source",
        ["-proxy.addr", ":5555;cs=name", "-proxy.cs", "cs=name;type=vault-pki;cert=pki/issue/value"], {}, None,
        Values({"proxy.addr": ADDR}), outcome=differs(VAULT, Error(("proxy.cs", "type=vault-pki", "no Vault server")))),
    row("-proxy.addr with vault-pki cert source, -proxy.cs first",
        ["-proxy.cs", "cs=name;type=vault-pki;cert=pki/issue/value", "-proxy.addr", ":5555;cs=name"], {}, None,
        Values({"proxy.addr": ADDR}), outcome=differs(VAULT, Error(("proxy.cs", "type=vault-pki", "no Vault server")))),
    row("-proxy.addr with cert source",
        ["-proxy.addr", ":5555;cs=name;strictmatch=true", "-proxy.cs",
         "cs=name;type=path;cert=foo;clientca=bar;refresh=2s;hdr=a: b;caupgcn=furb"], {}, None,
        Values({"proxy.addr": ADDR, "proxy.cs": "cs=name;type=path;cert=foo;clientca=bar;refresh=2s;hdr=a: b;caupgcn=furb"})),
    row("-proxy.addr with cert source with full options",
        ["-proxy.addr", ":5555;cs=name;strictmatch=true;proto=https", "-proxy.cs",
         "cs=name;type=path;cert=foo;clientca=bar;refresh=2s;hdr=a: b;caupgcn=furb"], {}, None,
        Values({"proxy.addr": ADDR, "proxy.cs": "cs=name;type=path;cert=foo;clientca=bar;refresh=2s;hdr=a: b;caupgcn=furb"})),
    row("-proxy.auth with source basic", ["-proxy.auth", "name=foo;type=basic;file={htpasswd};realm=realm"], {}, None,
        Auth("foo", "realm")),
    row("-proxy.auth with source basic and no realm specified", ["-proxy.auth", "name=foo;type=basic;file={htpasswd}"],
        {}, None, Auth("foo", "foo")),
    row("issue 305", ["-proxy.addr", ":443;cs=consul-cs,:80,:2375;proto=tcp+sni", "-proxy.cs",
                      "cs=consul-cs;type=consul;cert=http://localhost:8500/v1/kv/ssl?token=token"], {}, None,
        # our typed proxy.addr is the first plain HTTP listener (:80); the three listeners: test_listeners_config.py
        Values({"proxy.addr": ("0.0.0.0", 80),
                "proxy.cs": "cs=consul-cs;type=consul;cert=http://localhost:8500/v1/kv/ssl?token=token"},
               silent="listener")),
    row("-proxy.localip 1.2.3.4", ["-proxy.localip", "1.2.3.4"], {}, None, Values({"proxy.localip": "1.2.3.4"})),
    *[row(f"-proxy.strategy {s}", ["-proxy.strategy", s], {}, None, Values({"proxy.strategy": s})) for s in ("rnd", "rr")],
    *[row(f"-proxy.matcher {m}", ["-proxy.matcher", m], {}, None, Values({"proxy.matcher": m}))
      for m in ("prefix", "glob", "iprefix")],
    row("-proxy.noroutestatus 555", ["-proxy.noroutestatus", "555"], {}, None, Values({"proxy.noroutestatus": 555})),
    *[row(f"-proxy.{k} 5ms", [f"-proxy.{k}", "5ms"], {}, None, Values({f"proxy.{k}": 0.005}))
      for k in ("shutdownwait", "responseheadertimeout", "keepalivetimeout", "dialtimeout")],
    *[row(f"-proxy.{k} 5ms", [f"-proxy.{k}", "5ms"], {}, None, Values({f"proxy.{k}": 0.005}, silent=f"proxy.{k}"))
      for k in ("readtimeout", "writetimeout")],
    *[row(f"-proxy.{k} 5ms", [f"-proxy.{k}", "5ms"], {}, None, f"{k}=5ms", outcome=differs(NOT_YET, Warned(f"proxy.{k}")))
      for k in ("flushinterval", "globalflushinterval")],
    row("-proxy.maxconn 555", ["-proxy.maxconn", "555"], {}, None, Values({"proxy.maxconn": 555})),
    *[row(f"-proxy.header.{k} value", [f"-proxy.header.{k}", "value"], {}, None, Values({f"proxy.header.{k}": "value"}))
      for k in ("clientip", "tls", "tls.value", "requestid")],
    row("-proxy.header.sts.maxage 31536000", ["-proxy.header.sts.maxage", "31536000"], {}, None,
        Values({"proxy.header.sts.maxage": 31536000})),
    *[row(f"-proxy.header.sts.{k} true", [f"-proxy.header.sts.{k}", "true"], {}, None,
          Values({f"proxy.header.sts.{k}": True})) for k in ("subdomains", "preload")],
    row("-proxy.gzip.contenttype ^text/.*$", ["-proxy.gzip.contenttype", "^text/.*$"], {}, None,
        Values({"proxy.gzip.contenttype": "^text/.*$"}, silent="proxy.gzip")),
    row("-proxy.gzip.contenttype (fabio.properties' example)",
        ["-proxy.gzip.contenttype", "^(text/.*|application/(javascript|json|font-woff|xml)|.*\\+(json|xml))(;.*)?$"],
        {}, None, Values({"proxy.gzip.contenttype": "^(text/.*|application/(javascript|json|font-woff|xml)|.*\\+(json|xml))(;.*)?$"},
                         silent="proxy.gzip")),
    row("-proxy.log.routes foobar", ["-proxy.log.routes", "foobar"], {}, None, "Log.RoutesFormat=foobar",
        outcome=differs(NOT_YET, Warned("proxy.log.routes"))),
    row("-registry.backend value", ["-registry.backend", "value"], {}, None, "Registry.Backend=value",
        outcome=differs(ENUM, Error(("registry.backend", "consul, static, file")))),
    row("-registry.timeout 5s", ["-registry.timeout", "5s"], {}, None, Values({"registry.timeout": 5.0})),
    row("-registry.retry 500ms", ["-registry.retry", "500ms"], {}, None, Values({"registry.retry": 0.5})),
    row("-registry.file.path value", ["-registry.file.path", "value"], {}, None, Values({"registry.file.path": "value"})),
    row("-registry.file.noroutehtmlpath value", ["-registry.file.noroutehtmlpath", "value"], {}, None,
        "File.NoRouteHTMLPath=value", outcome=differs(NOT_YET, Warned("registry.file.noroutehtmlpath"))),
    row("-registry.static.routes value", ["-registry.static.routes", "value"], {}, None,
        Values({"registry.static.routes": "value"})),
    row("-registry.static.noroutehtml value", ["-registry.static.noroutehtml", "value"], {}, None,
        Values({"registry.static.noroutehtml": "value"})),
    *[row(f"-registry.consul.addr {a}", ["-registry.consul.addr", a], {}, None, Values({"consul": (scheme, "1.2.3.4:5555")}))
      for a, scheme in (("1.2.3.4:5555", "http"), ("http://1.2.3.4:5555/", "http"), ("https://1.2.3.4:5555/", "https"),
                        ("HTTPS://1.2.3.4:5555/", "https"))],
    row("-registry.consul.token some-token", ["-registry.consul.token", "some-token"], {}, None,
        Values({"registry.consul.token": "some-token"})),
    row("-registry.consul.kvpath /some/path", ["-registry.consul.kvpath", "/some/path"], {}, None,
        Values({"registry.consul.kvpath": "/some/path"})),
    row("-registry.consul.noroutehtmlpath /some/path", ["-registry.consul.noroutehtmlpath", "/some/path"], {}, None,
        Values({"registry.consul.noroutehtmlpath": "/some/path"})),
    row("-registry.consul.tagprefix p-", ["-registry.consul.tagprefix", "p-"], {}, None,
        Values({"registry.consul.tagprefix": "p-"})),
    row("-registry.consul.register.enabled=false", ["-registry.consul.register.enabled=false"], {}, None,
        Values({"registry.consul.register.enabled": False})),
    row("-registry.consul.register.addr 1.2.3.4:5555", ["-registry.consul.register.addr", "1.2.3.4:5555"], {}, None,
        Values({"registry.consul.register.addr": "1.2.3.4:5555"})),
    row("-registry.consul.register.name fab", ["-registry.consul.register.name", "fab"], {}, None,
        Values({"registry.consul.register.name": "fab"})),
    row("-registry.consul.register.checkTLSSkipVerify=true", ["-registry.consul.register.checkTLSSkipVerify=true"], {},
        None, Values({"registry.consul.register.checkTLSSkipVerify": True})),
    row("-registry.consul.register.tags a, b, c, ", ["-registry.consul.register.tags", "a, b, c, "], {}, None,
        Values({"registry.consul.register.tags": ("a", "b", "c")})),
    *[row(f"-registry.consul.register.{k} 5ms", [f"-registry.consul.register.{k}", "5ms"], {}, None,
          Values({f"registry.consul.register.{k}": 0.005})) for k in ("checkInterval", "checkTimeout")],
    row("-registry.consul.service.status a, b, ", ["-registry.consul.service.status", "a, b, "], {}, None,
        "ServiceStatus=[a b]", outcome=differs(ENUM, Error(("registry.consul.service.status", "passing")))),
    row("-registry.consul.serviceMonitors 5", ["-registry.consul.serviceMonitors", "5"], {}, None, "ServiceMonitors=5",
        outcome=differs(NOT_YET, Warned("registry.consul.serviceMonitors"))),
    row("-log.access.format foobar", ["-log.access.format", "foobar"], {}, None, Values({"log.access.format": "foobar"})),
    row("-log.access.target foobar", ["-log.access.target", "foobar"], {}, None, "Log.AccessTarget=foobar",
        outcome=differs(ENUM, Error(("log.access.target", "stdout")))),
    row("-log.routes.format foobar", ["-log.routes.format", "foobar"], {}, None, "Log.RoutesFormat=foobar",
        outcome=differs(ENUM, Warned("log.routes.format"))),
    row("-log.level foobar", ["-log.level", "foobar"], {}, None, "Log.Level=foobar",
        outcome=differs(ENUM, Error(("log.level", "INFO")))),
    *[row(f"-metrics.{k} {x}", [f"-metrics.{k}", x], {}, None, f"Metrics.{k}={x}",
          outcome=differs(NOT_YET, Warned(f"metrics.{k}")))
      for k, x in (("target", "some-target"), ("prefix", "some-prefix"), ("names", "some names"), ("interval", "5ms"),
                   ("timeout", "5s"), ("retry", "500ms"), ("graphite.addr", "1.2.3.4:5555"),
                   ("statsd.addr", "1.2.3.4:5555"), ("circonus.apiapp", "value"), ("circonus.apikey", "value"),
                   ("circonus.apiurl", "value"), ("circonus.brokerid", "value"), ("circonus.checkid", "value"),
                   ("circonus.submissionurl", "value"))],
    *[row(f"-runtime.{k} 555", [f"-runtime.{k}", "555"], {}, None, f"Runtime.{k}=555",
          outcome=differs(NOT_YET, Warned(f"runtime.{k}"))) for k in ("gogc", "gomaxprocs")],
    *[row(f"-ui.access {a}", ["-ui.access", a], {}, None, Values({"ui.access": a})) for a in ("ro", "rw")],
    row("-ui.addr 1.2.3.4:5555", ["-ui.addr", "1.2.3.4:5555"], {}, None, Values({"ui.addr": ("1.2.3.4", 5555)})),
    row("-ui.addr :9998;cs=ui -proxy.cs cs=ui;type=file;cert=value",
        ["-ui.addr", ":9998;cs=ui", "-proxy.cs", "cs=ui;type=file;cert=value"], {}, None,
        Values({"proxy.cs": "cs=ui;type=file;cert=value"}, silent="ui.addr", ui_cs="ui")),
    row("-ui.color value", ["-ui.color", "value"], {}, None, "UI.Color=value",
        outcome=differs(ENUM, Error(("ui.color", "value")))),
    row("-ui.title value", ["-ui.title", "value"], {}, None, Values({"ui.title": "value"})),
    row("ignore aws.apigw.cert.cn", ["-aws.apigw.cert.cn", "value"], {}, None, Values()),
    # config file
    row("config from environ", [], {"FABIO_proxy_addr": ":6666"}, None, Values({"proxy.addr": ("0.0.0.0", 6666)})),
    row("config from url", ["-cfg", "{url}"], {}, "proxy.addr = :5555", Values({"proxy.addr": ADDR}),
        outcome=differs(URL, Error(("-cfg", "not supported")))),
    row("config from file I", ["-cfg", "{file}"], {}, "proxy.addr = :5555", Values({"proxy.addr": ADDR})),
    row("config from file II", ["-cfg={file}"], {}, "proxy.addr = :5555", Values({"proxy.addr": ADDR})),
    row("config from file III", ["-cfg='{file}'"], {}, "proxy.addr = :5555", Values({"proxy.addr": ADDR})),
    row("config from file IV", ['-cfg="{file}"'], {}, "proxy.addr = :5555", Values({"proxy.addr": ADDR})),
    # precedence rules
    row("cmdline over config file I", ["-cfg", "{file}", "-proxy.addr", ":6666"], {}, "proxy.addr = :5555",
        Values({"proxy.addr": ("0.0.0.0", 6666)})),
    row("cmdline over config file II", ["-proxy.addr", ":6666", "-cfg", "{file}"], {}, "proxy.addr = :5555",
        Values({"proxy.addr": ("0.0.0.0", 6666)})),
    row("environ over config file", ["-cfg", "{file}"], {"FABIO_proxy_addr": ":6666"}, "proxy.addr = :5555",
        Values({"proxy.addr": ("0.0.0.0", 6666)})),
    row("cmdline over environ", ["-proxy.addr", ":5555"], {"FABIO_proxy_addr": ":6666"}, None,
        Values({"proxy.addr": ADDR})),
    # errors
    row("-proxy.addr with unknown cert source 'foo'", ["-proxy.addr", ":5555;cs=foo"], {}, None, Error(("proxy.addr", "foo"))),
    row("-proxy.addr with unknown proto 'foo'", ["-proxy.addr", ":5555;proto=foo"], {}, None, Error(("proxy.addr", "proto=foo"))),
    row("-proxy.addr with proto 'https' requires cert source", ["-proxy.addr", ":5555;proto=https"], {}, None,
        Error(("proxy.addr", "https"))),
    row("-proxy.addr with proto 'grpcs' requires cert source", ["-proxy.addr", ":5555;proto=grpcs"], {}, None,
        Error(("proxy.addr", "grpcs"))),
    row("-proxy.addr with cert source and proto 'http' requires proto 'https', 'tcp', or 'grpcs'",
        ["-proxy.addr", ":5555;cs=name;proto=http", "-proxy.cs", "cs=name;type=path;cert=value"], {}, None,
        Error(("proxy.addr",))),
    row("-proxy.addr with cert source and proto 'tcp+sni' requires proto 'https', 'tcp' or 'grpcs'",
        ["-proxy.addr", ":5555;cs=name;proto=tcp+sni", "-proxy.cs", "cs=name;type=path;cert=value"], {}, None,
        Error(("proxy.addr",))),
    row("-proxy.noroutestatus too small", ["-proxy.noroutestatus", "10"], {}, None,
        Error(("proxy.noroutestatus", "100", "999"))),
    row("-proxy.noroutestatus too big", ["-proxy.noroutestatus", "1000"], {}, None,
        Error(("proxy.noroutestatus", "100", "999"))),
    row("-proxy.auth with unknown auth type 'foo'", ["-proxy.auth", "name=myauth;type=foo"], {}, None, Auth(error="'foo'")),
    row("-proxy.auth with missing name", ["-proxy.auth", "type=basic;file=/some/file;realm=realm"], {}, None,
        Auth(error="name=")),
    row("-proxy.auth basic with missing file", ["-proxy.auth", "name=foo;type=basic;realm=realm"], {}, None,
        Auth(error="file=")),
    row("-cfg", ["-cfg"], {}, None, Error(("-cfg",))),
    row("-cfg=''", ["-cfg=''"], {}, None, Error(("-cfg",))),
    row('-cfg=""', ['-cfg=""'], {}, None, Error(("-cfg",))),
]


@pytest.fixture(scope="module")
def url_server():  # type: ignore[no-untyped-def]
    """fabio's "config from url" row serves the properties over HTTP."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = b"proxy.addr = :5555"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def typed(values: dict[str, Any]) -> dict[str, Any]:
    """Our values, with the Consul address read as fabio's (scheme, host:port) pair."""
    out = dict(values)
    addr = out.pop("registry.consul.addr")
    u = urlsplit(addr if "://" in addr else "http://" + addr)
    out["consul"] = (u.scheme, u.netloc)
    return out


DEFAULTS = typed(dict(load([], env={}).values))


@pytest.mark.parametrize(("args", "env", "data", "want", "outcome"), table(FILE, "TestLoad", MAIN))
def test_load(args: list[str], env: dict[str, str], data: str | None, want: Any, outcome: Outcome, tmp_path: Path,
              url_server: str) -> None:
    want = outcome.want(want)
    props = tmp_path / "fabio-config-test"
    if data is not None:
        props.write_text(data)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    args = [a.replace("{file}", str(props)).replace("{url}", url_server).replace("{htpasswd}", str(htpasswd))
            for a in args]
    if isinstance(want, Version):
        assert parse_args(args).version
        return
    if isinstance(want, Auth):
        value = parse_args(args).flags["proxy.auth"]
        if want.error:
            with pytest.raises(ValueError, match=want.error):
                parse_schemes(value)
        else:
            [scheme] = parse_schemes(value).values()
            assert (scheme.name, scheme.realm, scheme.file) == (want.name, want.realm, str(htpasswd))
        return
    if isinstance(want, Error):
        with pytest.raises(ConfigError) as e:
            load(args, env=env)
        for word in want.words:
            assert word in str(e.value)
        return
    cfg = load(args, env=env)
    assert typed(dict(cfg.values)) == {**DEFAULTS, **want.changed}
    if isinstance(want, Warned):
        assert any(want.key in w for w in cfg.warnings), cfg.warnings
    elif want.silent:
        assert not any(want.silent in w for w in cfg.warnings), cfg.warnings
    if isinstance(want, Values) and want.ui_cs:
        lst = cfg.ui_listener
        assert lst is not None and lst.proto == "https" and lst.cert_source is not None
        assert (lst.addr, lst.cert_source.name) == (":9998", want.ui_cs)
