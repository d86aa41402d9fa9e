"""The count block at the top of docs/compat.md is what the ported tables say (scripts/fabio_rows.py), every
deliberate difference quotes a line that is on that page, and every fabio test file issue 14 names is ported."""

from __future__ import annotations

from scripts import fabio_rows

FABIO_FILES = {
    "route/table_test.go", "route/parse_test.go", "route/matcher_test.go", "route/target_test.go",
    "route/issue57_test.go", "route/access_rules_test.go", "route/picker_test.go", "proxy/http_integration_test.go",
    "proxy/http_headers_test.go", "proxy/gzip/gzip_handler_test.go", "proxy/gzip/content_type_test.go",
    "registry/consul/parse_test.go", "registry/consul/routecmd_test.go", "registry/consul/passing_test.go",
    "registry/consul/matching_test.go", "config/load_test.go",
}


def test_compat_block_is_current() -> None:
    doc = fabio_rows.COMPAT.read_text()
    assert fabio_rows.BEGIN in doc, "run python scripts/fabio_rows.py --write"
    assert fabio_rows.with_block(doc, fabio_rows.block(fabio_rows.load_tables())) == doc, (
        "docs/compat.md's fabio row counts are stale: run python scripts/fabio_rows.py --write")


def test_every_difference_quotes_a_line_of_compat_md() -> None:
    doc = fabio_rows.COMPAT.read_text()
    differs = [r for r in fabio_rows.load_tables() if r.outcome.kind == "differs"]
    assert differs
    for r in differs:
        assert r.outcome.note and r.outcome.note in doc, (r.fabio_file, r.fabio_test, r.row, r.outcome.note)


def test_every_waiting_row_names_its_issue_and_feature() -> None:
    for r in fabio_rows.load_tables():
        if r.outcome.kind == "waiting":
            assert r.outcome.issue > 14 and r.outcome.note, r


def test_every_fabio_file_of_the_issue_is_ported() -> None:
    assert {r.fabio_file for r in fabio_rows.load_tables()} == FABIO_FILES
