"""Configuration: fabio's keys, defaults, sources and precedence; invalid values stop startup."""

from __future__ import annotations

import pytest

from router.config import ConfigError, load, parse_duration, read_properties


def test_defaults_are_fabios() -> None:
    cfg = load([], env={})
    assert cfg["proxy.addr"] == ("0.0.0.0", 9999)
    assert cfg["ui.addr"] == ("0.0.0.0", 9998)
    assert cfg["proxy.strategy"] == "rnd"
    assert cfg["proxy.noroutestatus"] == 404
    assert cfg["proxy.dialtimeout"] == 30.0
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
        ("proxy.strategy", "fastest", "one of rnd, rr"),
        ("proxy.matcher", "regex", "one of prefix, iprefix, glob"),
        ("proxy.noroutestatus", "1000", "from 100 to 999"),
        ("proxy.dialtimeout", "ten seconds", "a duration"),
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
    cfg = load([], env={}, properties={"proxy.gzip.contenttype": "text/.*", "no.such.key": "1", "proxy.strategy": "rr"})
    assert cfg["proxy.strategy"] == "rr"
    assert any("proxy.gzip.contenttype" in w and "not support" in w for w in cfg.warnings)
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
