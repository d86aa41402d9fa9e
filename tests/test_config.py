"""Configuration: fabio's keys, defaults, sources and precedence; invalid values stop startup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from router.config.keys import KEYS_BY_NAME
from router.config.settings import ConfigError, load, read_properties
from router.config.values import parse_duration
from router.run import cli
from tests.router_proc import RouterProc

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_fabios() -> None:
    cfg = load([], env={})
    assert cfg["proxy.addr"] == ("0.0.0.0", 9999)
    assert cfg["ui.addr"] == ("0.0.0.0", 9998)
    assert cfg["proxy.strategy"] == "p2c"  # ours, as docs/compat.md argues (fabio: rnd)
    assert cfg["proxy.noroutestatus"] == 404
    assert cfg["proxy.dialtimeout"] == 1.0  # ours, as docs/compat.md argues (fabio: 30s)
    assert cfg["registry.consul.addr"] == "localhost:8500"
    assert cfg["registry.consul.kvpath"] == "/fabio/config"
    assert cfg["registry.consul.tagprefix"] == "urlprefix-"
    assert cfg["registry.consul.service.status"] == ("passing",)
    assert cfg["registry.consul.checksRequired"] == "one"


def test_precedence_flag_over_env_over_file_over_default() -> None:
    props = {"proxy.strategy": "rr", "proxy.noroutestatus": "410", "proxy.matcher": "iprefix"}
    env = {"FABIO_PROXY_NOROUTESTATUS": "404", "PROXY_MATCHER": "glob"}
    cfg = load(["-proxy.noroutestatus", "418"], env=env, properties=props)
    assert cfg["proxy.strategy"] == "rr"  # file
    assert cfg["proxy.matcher"] == "glob"  # bare env name
    assert cfg["proxy.noroutestatus"] == 418  # flag beats env
    assert cfg.origin["proxy.noroutestatus"] == "flag"
    assert load([], env=env, properties=props)["proxy.noroutestatus"] == 404  # env beats file


def test_fabio_prefixed_env_beats_bare_env() -> None:
    cfg = load([], env={"FABIO_PROXY_STRATEGY": "rr", "PROXY_STRATEGY": "rnd"})
    assert cfg["proxy.strategy"] == "rr"


def test_flag_forms_and_cfg_file(tmp_path) -> None:
    f = tmp_path / "fabio.properties"
    f.write_text("# comment\nproxy.addr = 127.0.0.1:1234\nui.addr: :7000\nregistry.consul.tagprefix=\\\n  route-\n")
    cfg = load(["-cfg", str(f), "-proxy.strategy=rr"], env={})
    assert cfg["proxy.addr"] == ("127.0.0.1", 1234)
    assert cfg["ui.addr"] == ("0.0.0.0", 7000)
    assert cfg["registry.consul.tagprefix"] == "route-"
    assert cfg["proxy.strategy"] == "rr"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("proxy.strategy", "fastest", "one of p2c, rnd, rr"),
        ("proxy.matcher", "regex", "one of prefix, iprefix, glob"),
        ("proxy.noroutestatus", "1000", "from 100 to 999"),
        ("proxy.dialtimeout", "ten seconds", "a positive duration"),
        ("proxy.addr", "9999", "host:port"),
        ("ui.access", "admin", "one of ro, rw"),
        ("registry.consul.checksRequired", "some", "one of one, all"),
        ("registry.consul.service.status", "passing,great", "comma list of passing, warning, critical, unknown"),
        ("registry.backend", "etcd", "one of consul, static, file"),
    ],
)
def test_invalid_value_names_key_and_accepted_values(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load([f"-{key}", value], env={})
    msg = str(e.value)
    assert key in msg and repr(value) in msg and expected in msg


def test_both_consistency_modes_is_an_error() -> None:
    with pytest.raises(ConfigError, match="requireConsistent and registry.consul.allowStale"):
        load(["-registry.consul.requireConsistent", "true", "-registry.consul.allowStale", "true"], env={})
    assert load(["-registry.consul.allowStale", "true"], env={})["registry.consul.requireConsistent"] is False


def test_unknown_and_unsupported_keys_warn_but_start() -> None:
    cfg = load([], env={}, properties={"proxy.flushinterval": "1s", "no.such.key": "1", "proxy.strategy": "rr"})
    assert cfg["proxy.strategy"] == "rr"
    assert any("proxy.flushinterval" in w and "not support" in w for w in cfg.warnings)
    assert any("unknown key no.such.key" in w for w in cfg.warnings)


def test_secrets_are_redacted() -> None:
    cfg = load(["-registry.consul.token", "s3cr3t"], env={})
    red = cfg.redacted()
    assert red["registry.consul.token"] == "<redacted>"
    assert "s3cr3t" not in repr(red)


def test_missing_cfg_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(["-cfg", str(tmp_path / "nope.properties")], env={})


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "s", "1x", "1s2", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_properties_comments_and_separators() -> None:
    props = read_properties("! bang comment\n#hash\na=1\nb : 2\nc 3\n\nd=\n")
    assert props == {"a": "1", "b": "2", "c": "3", "d": ""}


# ----------------------------------------------------------------------------- numeric ranges
#
# Every numeric and duration key: values refused (negative, nan/inf, out of range, 0 where it cannot work)
# and values accepted at the edges (0 where fabio gives it a meaning). fabio's semantics: Go's Dialer and
# Transport read 0 as "no timeout"/"no limit"; HSTS is off at 0; Consul reads a 0 check timeout as its
# default. Ours: wait > 0 (0 would turn the hung-agent watchdog into a 5 s alarm), maxrate > 0
# (TokenBucket divides by it), eject.duration > 0 (use eject.failures=0 to turn ejection off).

NEGATIVE_AND_NOT_FINITE = ("-1", "-1s", "nan", "inf", "-inf", "NaN", "1e999")
RANGES = {
    # key: (refused besides NEGATIVE_AND_NOT_FINITE, accepted -> typed value)
    "proxy.noroutestatus": (("0", "99", "1000", "4O4", "404.0"), {"100": 100, "999": 999}),
    "proxy.dialtimeout": (("2562048h",), {"0": 0.0, "1ms": 0.001, "30s": 30.0}),
    "proxy.responseheadertimeout": ((), {"0": 0.0, "1m": 60.0}),
    "proxy.keepalivetimeout": (("32768s", "10h"), {"0": 0.0, "15s": 15.0, "32767s": 32767.0}),
    "proxy.idleconntimeout": ((), {"0": 0.0, "90s": 90.0}),
    "proxy.maxconn": (("1.5", "1_000"), {"0": 0, "10000": 10000}),
    "proxy.shutdownwait": ((), {"0": 0.0, "5s": 5.0}),
    "proxy.grpcshutdowntimeout": (("-1s",), {"0": 0.0, "2s": 2.0}),
    "proxy.deregistergraceperiod": ((), {"0": 0.0, "5s": 5.0}),
    "proxy.readtimeout": ((), {"0": 0.0, "5s": 5.0}),
    "proxy.writetimeout": ((), {"0": 0.0, "1m": 60.0}),
    "proxy.header.sts.maxage": (("1.5",), {"0": 0, "31536000": 31536000}),
    "proxy.workers": (("257",), {"0": 0, "256": 256}),
    "proxy.maxheaderbytes": (("1023", str((1 << 30) + 1)), {"1024": 1024, str(1 << 30): 1 << 30}),
    "proxy.grpcmaxrxmsgsize": (("-1", str(1 << 31)), {"0": 0, "4194304": 4194304}),
    "proxy.grpcmaxtxmsgsize": (("-1", str(1 << 31)), {"0": 0, str((1 << 31) - 1): (1 << 31) - 1}),
    "proxy.retry.attempts": (("0", "17"), {"1": 1, "16": 16}),
    "proxy.eject.failures": (("1001",), {"0": 0, "1000": 1000}),
    "proxy.eject.duration": (("0", "0s", "1us"), {"1ms": 0.001, "10s": 10.0}),
    "proxy.compress.minsize": (("1.5", "1k"), {"0": 0, "1024": 1024}),
    "proxy.maxbodybytes": (("1.5", "1MB"), {"0": 0, "1048576": 1048576}),
    "proxy.eject.maxduration": (("0", "-1s"), {"1ms": 0.001, "1m": 60.0}),
    "proxy.eject.maxshare": (("-0.1", "1.5", "nan", "half"), {"0": 0.0, "0.5": 0.5, "1": 1.0}),
    "proxy.retry.budget": (("-1", "11", "inf"), {"0": 0.0, "0.2": 0.2, "10": 10.0}),
    "proxy.retry.budget.min": (("-1", "x"), {"0": 0.0, "10": 10.0}),
    "proxy.retry.pertrytimeout": (("-1s", "fast"), {"0": 0.0, "250ms": 0.25}),
    "proxy.stall.timeout": (("-1s", "slow"), {"0": 0.0, "1s": 1.0, "30s": 30.0}),
    "proxy.retry.buffer": (("-1", "1.5", str((1 << 30) + 1)), {"0": 0, "65536": 65536}),
    "proxy.hedge.delay": (("-1ms",), {"0": 0.0, "25ms": 0.025}),
    "proxy.lb.decay": (("0", "1us"), {"1ms": 0.001, "1s": 1.0}),
    "proxy.maxinflight": (("-1", "2.5"), {"0": 0, "100": 100}),
    "registry.timeout": ((), {"0": 0.0, "10s": 10.0}),
    "registry.retry": ((), {"0": 0.0, "500ms": 0.5}),
    "registry.consul.pollInterval": ((), {"0": 0.0, "5s": 5.0}),
    "registry.consul.register.checkInterval": (("0", "0s", "500us"), {"1ms": 0.001, "1s": 1.0}),
    "registry.consul.register.checkTimeout": ((), {"0": 0.0, "3s": 3.0}),
    "registry.consul.wait": (("0", "0s", "10m1s", "1h"), {"1ms": 0.001, "60s": 60.0, "10m": 600.0}),
    "registry.consul.unrunhold": ((), {"0": 0.0, "45s": 45.0, "2m": 120.0}),
    "registry.consul.maxrate": (("0", "0.0", "-5", "1_0", "0x10"), {"0.5": 0.5, "20": 20.0, "1e3": 1000.0}),
    "registry.consul.hotwatches": (("151", "-1", "x"), {"0": 0, "64": 64, "150": 150}),
    "ui.health.maxsyncage": ((), {"0": 0.0, "2m": 120.0}),
    "glob.cache.size": (("1.5",), {"0": 0, "1000": 1000}),
}


def test_every_numeric_key_has_a_range_case() -> None:
    """A key that refuses words (and true/false words) but takes some number or duration is numeric."""
    numeric = {name for name in KEYS_BY_NAME if _refuses(name, "x") and _refuses(name, "yes")
               and any(_accepts(name, v) for v in ("0", "1", "100", "1024", "0.5", "1ms", "1s"))}
    assert numeric == set(RANGES)


def _accepts(name: str, value: str) -> bool:
    try:
        KEYS_BY_NAME[name].parse(value)
        return True
    except ValueError:
        return False


def _refuses(name: str, value: str) -> bool:
    return not _accepts(name, value)


def _load(key: str, value: str):  # type: ignore[no-untyped-def]
    extra = ["-ui.health.maxsyncage", "0"] if key == "registry.consul.wait" else []
    if key == "ui.health.maxsyncage" and value != "0":
        extra = ["-registry.consul.wait", "1s"]
    return load([f"-{key}={value}", *extra], env={})


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, (bad, _) in RANGES.items()
                                            for v in (*NEGATIVE_AND_NOT_FINITE, *bad)])
def test_out_of_range_value_names_key_value_and_accepted_values(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(key, value)
    msg = str(e.value)
    assert f"invalid value {value!r} for {key} (from flag): expected " in msg
    assert msg.split("expected ", 1)[1].strip(), msg


@pytest.mark.parametrize(("key", "value", "typed"), [(k, v, t) for k, (_, good) in RANGES.items()
                                                     for v, t in good.items()])
def test_in_range_value_is_accepted(key: str, value: str, typed: object) -> None:
    assert _load(key, value)[key] == pytest.approx(typed)


@pytest.mark.parametrize(("key", "value", "accepted"), [
    ("registry.consul.maxrate", "0", "a number greater than 0"),
    ("registry.consul.wait", "0", "a duration of at least 1ms and at most 10m (Consul's maximum)"),
    ("proxy.dialtimeout", "-1s", "0 (no timeout) or a positive duration"),
    ("proxy.responseheadertimeout", "nan", "0 (no timeout) or a positive duration"),
    ("proxy.keepalivetimeout", "1d", "at most 32767s"),
    ("proxy.eject.duration", "0", "a duration of at least 1ms"),
    ("proxy.header.sts.maxage", "-1", "a whole number, 0 or more (0 = no HSTS header)"),
])
def test_range_messages(key: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as e:
        load([f"-{key}", value], env={})
    assert f"invalid value {value!r} for {key} (from flag): expected " in str(e.value) and accepted in str(e.value)


def test_main_exits_non_zero_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in (("registry.consul.maxrate", "0"), ("registry.consul.wait", "0"), ("proxy.dialtimeout", "-1s")):
        assert cli.main([f"-{key}", value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error: invalid value") and key in err and repr(value) in err, err


@pytest.mark.parametrize(("flags", "needle"), [
    (["-registry.consul.maxrate", "nan"], "invalid value 'nan' for registry.consul.maxrate (from flag): expected a "
                                          "number greater than 0"),
    (["-proxy.addr", ":443;cs=x;proto=https"], "listener :443;cs=x;proto=https: unknown certificate source cs=x"),
    (["-cfg", "https://config.example/fabio.properties"], "loading the properties from a URL is not supported"),
])
def test_real_startup_refuses_with_the_message(flags: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "router", *flags], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr, r.stderr


# ----------------------------------------------------------------------------- fabio's leniency


@pytest.mark.parametrize(("value", "level"), [("info", "INFO"), ("Debug", "DEBUG"), ("warn", "WARN"),
                                              (" error ", "ERROR"), ("TRACE", "TRACE")])
def test_log_level_in_any_case(value: str, level: str) -> None:
    assert load(["-log.level", value], env={})["log.level"] == level


def test_unknown_log_level_still_stops_startup() -> None:
    with pytest.raises(ConfigError, match=r"'verbose' for log\.level.*one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL"):
        load(["-log.level", "verbose"], env={})


@pytest.mark.parametrize("value", ["fancy", "DELTA", ""])
def test_unknown_routes_format_warns_and_uses_delta(value: str) -> None:
    cfg = load(["-log.routes.format", value], env={})
    assert cfg["log.routes.format"] == "delta"
    assert [w for w in cfg.warnings if "log.routes.format" in w] == [
        f"invalid value {value!r} for log.routes.format (from flag): expected one of delta, all, detail; "
        "using delta (as fabio does)"]


# ----------------------------------------------------------------------------- listeners

@pytest.mark.parametrize(("key", "addr", "typed", "warned"), [
    ("proxy.addr", ":9999", ("0.0.0.0", 9999), []),
    ("proxy.addr", "127.0.0.1:9999;proto=http;it=30s", ("127.0.0.1", 9999), []),
    ("proxy.addr", ":9999;strictmatch=true;bogus=1", ("0.0.0.0", 9999), ["bogus=1 is unknown"]),
    ("proxy.addr", ":3306;proto=tcp,:9999", ("0.0.0.0", 9999), []),  # the typed value: the first HTTP listener
    ("proxy.addr", "addr=[::1]:9999;it=0", ("::1", 9999), []),
    ("ui.addr", "127.0.0.1:9998;proto=http", ("127.0.0.1", 9998), []),
    ("ui.addr", ":9998;it=30s;rt=1s;wt=2s", ("0.0.0.0", 9998), []),  # all three applied (tests/test_ui_deadlines.py)
    ("ui.addr", ":9998;pxyproto=true;pxytimeout=1s", ("0.0.0.0", 9998), []),  # tests/test_ui_deadlines.py
    ("ui.addr", ":9998;refresh=1s", ("0.0.0.0", 9998), ["refresh=1s is not supported"]),
])
def test_listener_options_and_extra_listeners_are_warned_about(key: str, addr: str, typed: tuple, warned: list) -> None:
    # every proxy.addr option and protocol: tests/test_listeners_config.py
    cfg = load([f"-{key}", addr], env={})
    assert cfg[key] == typed
    mine = [w for w in cfg.warnings if w.startswith(f"flag: {key}: ")]
    assert len(mine) == len(warned), mine
    for w, needle in zip(mine, warned, strict=True):
        assert needle in w, w


@pytest.mark.parametrize(("key", "addr", "expected"), [
    ("proxy.addr", ":9999;proto=gopher", "unknown protocol proto=gopher"),
    ("proxy.addr", ":9999;it=soon", "it= must be"),
    ("proxy.addr", ";proto=http", "host:port"),
    ("proxy.addr", ":99999", "a port from 0 to 65535"),
    ("ui.addr", ":9998;proto=tcp", "an HTTP or HTTPS listener"),
    ("ui.addr", ":9998,:9997", "exactly one listener"),
])
def test_listeners_that_cannot_be_served_as_configured_stop_startup(key: str, addr: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load([f"-{key}", addr], env={})
    assert f"invalid value {addr!r} for {key}" in str(e.value) and expected in str(e.value)


def test_ui_addr_with_a_cert_source_is_an_https_listener() -> None:
    cfg = load(["-ui.addr", "127.0.0.1:9443;cs=ui;tlsmin=tls12;strictmatch=true",
                "-proxy.cs", "cs=ui;type=file;cert=/x/cert.pem;key=/x/key.pem"], env={})
    lst = cfg.ui_listener
    assert cfg["ui.addr"] == ("127.0.0.1", 9443) and lst is not None
    assert (lst.proto, lst.tls, lst.cert_source.cert, lst.tls_min, lst.strict_match) == (  # type: ignore[union-attr]
        "https", True, "/x/cert.pem", 0x0303, True)
    assert not [w for w in cfg.warnings if "ui.addr" in w]
    assert load([], env={}).ui_listener.tls is False  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"invalid ui.addr \(from flag\): unknown certificate source cs=nope"):
        load(["-ui.addr", ":9998;cs=nope"], env={})


# ----------------------------------------------------------------------------- other fabio keys


@pytest.mark.parametrize(("addr", "typed"), [
    ("HTTPS://consul.example:8501", "https://consul.example:8501"),
    ("Http://127.0.0.1:8500", "http://127.0.0.1:8500"),
    ("https://consul.example:8501", "https://consul.example:8501"),
    ("consul:8500", "consul:8500"),
])
def test_consul_scheme_in_any_case(addr: str, typed: str) -> None:
    from registry.consul.api import consul_base_url

    cfg = load(["-registry.consul.addr", addr], env={})
    assert cfg["registry.consul.addr"] == typed
    assert consul_base_url(cfg["registry.consul.addr"]).startswith(("http://", "https://"))
    assert consul_base_url(cfg["registry.consul.addr"]).split("://")[0] == (
        "https" if addr.lower().startswith("https") else "http")


@pytest.mark.parametrize("addr", ["ftp://consul:8500", "https://", ""])
def test_bad_consul_addr_stops_startup(addr: str) -> None:
    with pytest.raises(ConfigError, match=r"registry\.consul\.addr.*host:port, http://host:port or https://host:port"):
        load(["-registry.consul.addr", addr], env={})


def test_empty_consul_addr_is_fine_without_consul() -> None:
    assert load(["-registry.consul.addr", "", "-registry.backend", "static"], env={})["registry.consul.addr"] == ""


@pytest.mark.parametrize("url", ["http://cfg.example/fabio.properties", "HTTPS://u:pw@cfg.example/f.properties"])
def test_cfg_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(["-cfg", url], env={})
    msg = str(e.value)
    assert msg.startswith("-cfg ") and "from a URL is not supported" in msg and "pw" not in msg


def test_static_noroutehtml_is_a_known_key() -> None:
    cfg = load(["-registry.backend", "static", "-registry.static.noroutehtml", "<h1>nothing here</h1>"], env={})
    assert cfg["registry.static.noroutehtml"] == "<h1>nothing here</h1>"
    assert cfg.warnings == ()
    other = load(["-registry.static.noroutehtml", "<p>x</p>"], env={})  # consul backend: fabio ignores it too
    assert any("registry.static.noroutehtml has an effect only with registry.backend=static" in w
               for w in other.warnings)


def test_static_noroutehtml_is_the_no_route_page() -> None:
    with RouterProc.static("route add svc /known http://127.0.0.1:1/", "-registry.static.noroutehtml",
                           "<h1>nothing here</h1>") as r:
        resp = httpx.get(r.url + "/unknown", timeout=10)
    assert resp.status_code == 404 and resp.text == "<h1>nothing here</h1>"


# ----------------------------------------------------------------------------- secrets in values


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("registry.consul.addr", "https://user:s3cr3t@consul.example:8501", "https://user:<redacted>@consul.example:8501"),
    ("registry.consul.addr", "HTTPS://user:s3cr3t@consul:8501", "HTTPS://user:<redacted>@consul:8501"),  # raw
    ("registry.consul.addr", "http://s3cr3t@consul:8500", "http://<redacted>@consul:8500"),
    ("registry.consul.addr", "user:s3cr3t@consul:8500", "user:<redacted>@consul:8500"),
    ("registry.consul.addr", "https://us%40er:s3c@r3t@consul:8501/x", "https://us%40er:<redacted>@consul:8501/x"),
    ("registry.static.routes", "route add a / http://u:s3cr3t@10.0.0.1/\nroute add b /b https://x:s3cr3t@h/",
     "route add a / http://u:<redacted>@10.0.0.1/\nroute add b /b https://x:<redacted>@h/"),
    ("ui.title", "mail me at ops@example.com", "mail me at ops@example.com"),
    ("registry.consul.addr", "consul.example:8500", "consul.example:8500"),
])
def test_passwords_in_url_values_are_redacted(key: str, value: str, shown: str) -> None:
    cfg = load([f"-{key}", value, "-registry.backend", "static"], env={})
    red = cfg.redacted()
    assert red[key] == shown
    assert "s3cr3t" not in repr(red) and "r3t" not in repr(red)


def test_password_in_an_invalid_value_is_not_in_the_error() -> None:
    with pytest.raises(ConfigError) as e:
        load(["-registry.consul.addr", "ftp://user:s3cr3t@consul:8500"], env={})
    assert "s3cr3t" not in str(e.value) and "ftp://user:<redacted>@consul:8500" in str(e.value)


def test_config_doc_counts_keys_read_through_f_strings_as_used() -> None:
    from router.config.keys import KEYS
    from scripts.gen_config_docs import in_use

    for name in ("registry.consul.tls.cafile", "registry.consul.tls.capath", "registry.consul.tls.certfile",
                 "registry.consul.tls.keyfile", "registry.consul.tls.insecureskipverify",
                 "registry.consul.register.checkInterval", "registry.consul.register.checkTimeout",
                 "registry.static.noroutehtml", "proxy.addr"):
        assert in_use(KEYS_BY_NAME[name]), name
    for key in KEYS:  # a key said to have no effect is read nowhere
        assert not (key.todo and in_use(key)), key.name


@pytest.mark.parametrize("value", ["light-gren", "blue darken-5", "blue lighten", "#12345", "red; background: x"])
def test_a_bad_ui_color_is_refused_naming_what_is_accepted(value: str) -> None:
    with pytest.raises(ValueError, match="Materialize colour|modifier"):
        KEYS_BY_NAME["ui.color"].parse(value)


@pytest.mark.parametrize("value, kept", [("light-green", "light-green"), ("Red  Darken-2", "red darken-2"),
                                         ("#ABC", "#abc"), ("teal accent-3", "teal accent-3")])
def test_ui_color_accepts_fabio_class_names_and_hex(value: str, kept: str) -> None:
    assert KEYS_BY_NAME["ui.color"].parse(value) == kept


def test_gzip_contenttype_is_checked_as_a_regexp() -> None:
    cfg = load(["-proxy.gzip.contenttype", "^text/.*$"], env={})
    assert cfg["proxy.gzip.contenttype"] == "^text/.*$" and cfg["proxy.compress.minsize"] == 1024
    with pytest.raises(ConfigError, match="proxy.gzip.contenttype"):
        load(["-proxy.gzip.contenttype", "text/(.*"], env={})
