"""fabio's listener grammar (`proxy.addr`) and certificate sources (`proxy.cs`): router/config/listeners.py.

Table-driven: each row is a value as a user writes it and what it must mean, or the message that must
name what is wrong (fabio's config/load_test.go cases, plus the errors fabio lets through silently).
"""

from __future__ import annotations

import pytest

from router.config.addrs import proxy_listeners
from router.config.listeners import CertSourceSpec, Listener, tls_ciphers, tls_version
from router.config.settings import ConfigError, load
from router.config.values import parse_bool, parse_duration

CS = {"a": CertSourceSpec("a", "path", "/etc/certs"), "b": CertSourceSpec("b", "file", "/c.pem", "/k.pem")}


def one(text: str, sources: dict | None = None) -> Listener:
    (lst,) = proxy_listeners(text, CS if sources is None else sources)
    return lst


@pytest.mark.parametrize(("text", "expected"), [
    (":5555", dict(addr=":5555", host="0.0.0.0", port=5555, proto="http", tls=False)),
    (":5555;proto=http", dict(proto="http")),
    (":5555;proto=tcp", dict(proto="tcp", tls=False)),
    (":5555;proto=tcp+sni", dict(proto="tcp+sni", tls=False)),
    (":5555;proto=tcp-dynamic;refresh=5s", dict(proto="tcp-dynamic", refresh=5.0)),
    (":5555;proto=tcp-dynamic", dict(refresh=1.0)),  # ours: fabio's 0 re-scans in a busy loop
    (":5555;proto=grpc", dict(proto="grpc")),
    (":5555;cs=a", dict(proto="https", tls=True, cert_source=CS["a"])),  # cs= without proto= is https
    (":5555;proto=https;cs=a", dict(proto="https", cert_source=CS["a"])),
    (":5555;cs=a;proto=tcp", dict(proto="tcp", tls=True)),  # TLS-terminated TCP; option order does not matter
    (":5555;proto=grpcs;cs=b", dict(proto="grpcs", cert_source=CS["b"])),
    (":5555;proto=https+tcp+sni;cs=a", dict(proto="https+tcp+sni", tls=True)),
    ("127.0.0.1:5555;rt=1s;wt=2s;it=3s", dict(host="127.0.0.1", read_timeout=1.0, write_timeout=2.0, idle_timeout=3.0)),
    ("[::1]:5555", dict(host="::1", port=5555)),
    ("addr=127.0.0.2:5555", dict(host="127.0.0.2")),
    (':5555;tlsmin=0x0300;tlsmax=0x304;tlsciphers="0x1301,0xc02f"', dict(tls_min=0x300, tls_max=0x304,
                                                                        tls_ciphers=(0x1301, 0xC02F))),
    (":5555;cs=a;tlsmin=tls10;tlsmax=TLS12;tlsciphers='TLS_RSA_WITH_RC4_128_SHA,tls_ecdhe_ecdsa_with_aes_256_gcm_sha384'",
     dict(tls_min=0x301, tls_max=0x303, tls_ciphers=(0x0005, 0xC02C))),
    (":5555;cs=a;strictmatch=true", dict(strict_match=True)),
    (":5555;cs=a;strictmatch=false", dict(strict_match=False)),
    (":5555;pxyproto=true", dict(proxy_proto=True, proxy_timeout=0.25)),  # fabio #524: 250ms by default
    (":5555;pxyproto=true;pxytimeout=0", dict(proxy_timeout=0.25)),
    (":5555;pxyproto=true;pxytimeout=1s", dict(proxy_timeout=1.0)),
    (":5555;pxytimeout=1s", dict(proxy_proto=False, proxy_timeout=1.0)),
])
def test_listener_options_mean_what_fabio_says(text: str, expected: dict) -> None:
    lst = one(text)
    for name, value in expected.items():
        assert getattr(lst, name) == value, (name, getattr(lst, name))


def test_several_listeners_keep_their_order_and_options() -> None:
    # fabio issue 305's configuration
    got = proxy_listeners(":443;cs=a,:80, :2375;proto=tcp+sni", CS)
    assert [(x.addr, x.proto, x.tls) for x in got] == [(":443", "https", True), (":80", "http", False),
                                                      (":2375", "tcp+sni", False)]
    assert str(got[0]) == ":443;cs=a"


def test_proxy_readtimeout_and_writetimeout_are_the_defaults_of_rt_and_wt() -> None:
    cfg = load(["-proxy.addr", ":1;rt=1s,:2", "-proxy.readtimeout", "5s", "-proxy.writetimeout", "7s"], env={})
    assert [(x.read_timeout, x.write_timeout) for x in cfg.listeners] == [(1.0, 7.0), (5.0, 7.0)]


@pytest.mark.parametrize(("text", "message"), [
    (":5555;proto=gopher", "listener :5555;proto=gopher: unknown protocol proto=gopher (one of http, https"),
    (":5555;proto=https", "proto=https needs a certificate source (cs=<name> from proxy.cs)"),
    (":5555;proto=grpcs", "proto=grpcs needs a certificate source"),
    (":5555;proto=http;cs=a", "cs= needs proto https, tcp, tcp-dynamic, https+tcp+sni, grpcs, prometheus; proto=http"),
    (":5555;proto=tcp+sni;cs=a", "proto=tcp+sni cannot have one"),
    (":5555;cs=nope", "unknown certificate source cs=nope (proxy.cs defines a, b)"),
    (":5555;rt=soon", "listener :5555;rt=soon: rt= must be"),
    (":5555;wt=-1s", "wt= must be"),
    (":5555;it=1x", "it= must be"),
    (":5555;pxytimeout=fast", "pxytimeout= must be"),
    (":5555;proto=tcp-dynamic;refresh=often", "refresh= must be"),
    (":5555;strictmatch=yes please", "strictmatch= must be true or false"),  # fabio: silently false
    (":5555;pxyproto=ture", "pxyproto= must be true or false"),
    (":5555;tlsmin=tls14", "tlsmin= must be a TLS version: ssl30, tls10, tls11, tls12, tls13 or a number such as"),
    (":5555;tlsmin=0x0305", "tlsmin= must be a TLS version from 0x0300 (ssl30) to 0x0304 (tls13), got '0x0305'"),
    (":5555;tlsmax=0x10000", "tlsmax= must be a TLS version"),
    (":5555;tlsmin=tls13;tlsmax=tls12", "tlsmin=tls13 is above tlsmax=tls12"),
    (":5555;tlsciphers=TLS_NOPE", "tlsciphers= must be a cipher suite name such as"),
    (":5555;tlsciphers=,", "tlsciphers= must be at least one cipher suite"),
    (";proto=http", "need a listening host:port"),
    ("5555", "address '5555': expected host:port"),
    (":99999", "expected a port from 0 to 65535"),
    (":5555,:5555;proto=tcp", "0.0.0.0:5555 is also listener :5555"),
])
def test_invalid_listeners_are_named_with_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        proxy_listeners(text, CS)
    assert message in str(e.value), str(e.value)


def test_startup_refuses_a_bad_listener_naming_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        load(["-proxy.addr", ":443;cs=x"], env={})
    assert "invalid proxy.addr (from flag): listener :443;cs=x: unknown certificate source cs=x" in str(e.value)


def test_unknown_listener_options_are_warned_about_and_ignored() -> None:
    cfg = load(["-proxy.addr", ":5555;bogus=1;it=3s"], env={})
    assert cfg.listeners[0].idle_timeout == 3.0
    assert [w for w in cfg.warnings if "bogus" in w] == [
        "flag: proxy.addr: listener :5555;bogus=1;it=3s: option bogus=1 is unknown (to fabio too); ignored"]


@pytest.mark.parametrize(("text", "expected"), [
    ("cs=a;type=file;cert=/c.pem;key=/k.pem;clientca=/ca.pem",
     CertSourceSpec("a", "file", "/c.pem", "/k.pem", "/ca.pem", 0.0)),  # file: read once (refresh 0)
    ("cs=a;type=path;cert=/etc/certs", CertSourceSpec("a", "path", "/etc/certs", refresh=3.0)),
    ("cs=a;type=path;cert=/etc/certs;refresh=2s;caupgcn=furb",
     CertSourceSpec("a", "path", "/etc/certs", refresh=2.0, caupgcn="furb")),
    ("cs=a;type=http;cert=http://127.0.0.1:1/list;hdr=X-Token: s3cret",
     CertSourceSpec("a", "http", "http://127.0.0.1:1/list", refresh=3.0, headers=(("X-Token", "s3cret"),))),
    ("cs=a;type=consul;cert=http://localhost:8500/v1/kv/ssl?token=token;refresh=9s",
     CertSourceSpec("a", "consul", "http://localhost:8500/v1/kv/ssl?token=token", refresh=0.0)),
])
def test_cert_sources(text: str, expected: CertSourceSpec) -> None:
    cfg = load(["-proxy.cs", text, "-proxy.addr", ":5555;cs=a"], env={})
    assert cfg.listeners[0].cert_source == expected


def test_several_cert_sources() -> None:
    cfg = load(["-proxy.cs", "cs=x;type=path;cert=/a,cs=y;type=file;cert=/b.pem", "-proxy.addr", ":1;cs=y,:2;cs=x"],
               env={})
    assert [x.cert_source.name for x in cfg.listeners] == ["y", "x"]


@pytest.mark.parametrize(("text", "message"), [
    ("type=path;cert=/a", "missing cs=<name>"),
    ("cs=a;cert=/a", "cert source 'a': missing type= (one of file, path, http, consul, vault, vault-pki)"),
    ("cs=a;type=ftp;cert=/a", "unknown type=ftp"),
    ("cs=a;type=path", "cert source 'a': missing cert="),
    ("cs=a;type=path;cert=/a;refresh=later", "refresh= must be"),
    ("cs=a;type=http;cert=http://x/;hdr=NoColon", "hdr='NoColon' must be 'Name: value'"),
    ("cs=a;type=path;cert=/a;colour=blue", "unknown option colour="),
    ("cs=a;type=path;cert=/a,cs=a;type=file;cert=/b", "cert source 'a': defined twice"),
    ("cs=v;type=vault;cert=secret/fabio/certs", "type=vault is not supported by this router (no Vault server to test"),
    ("cs=v;type=vault-pki;cert=pki/issue/x", "type=vault-pki is not supported"),
])
def test_invalid_cert_sources_stop_startup(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(["-proxy.cs", text], env={})
    assert str(e.value).startswith("invalid proxy.cs (from flag): ") and message in str(e.value), str(e.value)


def test_a_cert_source_value_is_never_shown_in_the_error_when_it_is_a_secret_header() -> None:
    # hdr= usually carries a token; the message names the source, not the header's value
    with pytest.raises(ConfigError) as e:
        load(["-proxy.cs", "cs=a;type=http;cert=http://x/;hdr=Authorization: Bearer abc;refresh=x"], env={})
    assert "abc" not in str(e.value)


@pytest.mark.parametrize(("text", "value"), [("ssl30", 0x300), ("TLS13", 0x304), ("0x0303", 0x303), ("771", 0x303),
                                             (" tls11 ", 0x302)])
def test_tls_versions(text: str, value: int) -> None:
    assert tls_version(text) == value


def test_tls_cipher_numbers_in_go_syntax() -> None:
    assert tls_ciphers("0xc02f, 49200, 0o140057") == (0xC02F, 0xC030, 0xC02F)


def test_the_helpers_used_are_the_settings_parsers() -> None:
    # the listener grammar takes durations and booleans exactly as every other key does
    assert parse_duration("1m30s") == 90.0 and parse_bool("TRUE") is True
