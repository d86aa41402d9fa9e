"""Unit tests of the benchmark harness's parsing and report writing (no processes started)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("http_bench", Path(__file__).parent.parent / "bench" / "http_bench.py")
assert _SPEC and _SPEC.loader
hb = importlib.util.module_from_spec(_SPEC)
sys.modules["http_bench"] = hb  # dataclasses look their module up while the class is built
_SPEC.loader.exec_module(hb)

WRK_OUT = """Running 2s test @ http://127.0.0.1:1/bench
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   600.00us  200.00us   5.00ms   90.00%
  Latency Distribution
     50%  412.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.20s
  1000 requests in 2.00s, 100.00KB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:    500.50
Transfer/sec:     50.00KB
"""


def test_parse_wrk_units_and_errors() -> None:
    r = hb.parse_wrk(WRK_OUT)
    assert r.rps == 500.5
    assert abs(r.p50_ms - 0.412) < 1e-9
    assert r.p99_ms == 1200.0
    assert r.errors == 12


def test_paired_ratio_is_median_of_per_round_ratios() -> None:
    assert hb.paired_ratio([2, 4, 6], [1, 4, 2]) == "2.00"
    assert hb.paired_ratio([1, 2], [1]) == "–"


def test_write_block_replaces_marked_block(tmp_path: Path) -> None:
    out = tmp_path / "b.md"
    out.write_text(f"# B\n\nintro\n\n{hb.MARK_START}\nold\n{hb.MARK_END}\n\ntail\n")
    hb.write_block(out, f"{hb.MARK_START}\nnew\n{hb.MARK_END}\n")
    assert out.read_text() == f"# B\n\nintro\n\n{hb.MARK_START}\nnew\n{hb.MARK_END}\n\ntail\n"


def test_write_block_appends_when_absent(tmp_path: Path) -> None:
    out = tmp_path / "b.md"
    out.write_text("# B\n")
    hb.write_block(out, f"{hb.MARK_START}\nx\n{hb.MARK_END}\n")
    assert out.read_text() == f"# B\n\n{hb.MARK_START}\nx\n{hb.MARK_END}\n"


def test_consul_services_carry_the_static_routes_as_tags() -> None:
    be = hb.Backends(web=1111, sink=2222)
    svcs = {s["Name"]: s for s in hb.consul_services(be)}
    assert svcs["bench"]["Port"] == 1111 and svcs["sink"]["Port"] == 2222
    assert svcs["bench"]["Tags"] == ["urlprefix-/bench", "urlprefix-/download"]
    assert svcs["sink"]["Tags"] == ["urlprefix-/upload"]
    assert all(s["Check"]["Status"] == "passing" for s in svcs.values())


def test_ratio_table_has_rows_for_both_router_targets() -> None:
    def t(name: str, rps: list[float]) -> object:
        return hb.Target(name, rps=rps, p99=[1.0], down=[1.0], up=[1.0])
    rows = hb.ratio_table([t("router", [4.0]), t("router-consul", [3.0]), t("caddy", [2.0])])
    assert rows[2].startswith("| router/caddy | 2.00 ")
    assert rows[3].startswith("| router-consul/caddy | 1.50 ")
    assert len(rows) == 4
