"""Shared helpers for fabio's own test tables, ported row by row (one pytest case per fabio row).

Each module in tests/fabio/ ports one fabio test file. A table is declared with :func:`table`: it takes the
fabio file and test function, and rows made with :func:`row`, each with the values the test needs and its
outcome:

* ``AGREE`` (the default): we do what fabio's row expects; an ordinary test.
* :func:`differs`: a deliberate difference. The test asserts what *we* do (``outcome.want(fabio's)``
  gives ours), and the outcome quotes the docs/compat.md row that gives the reason
  (tests/fabio/test_counts.py checks that the quote is there).
* :func:`waiting`: needs a feature we do not have yet. The test asserts fabio's expectation and is a strict
  expected failure naming the issue that brings the feature, so it turns into a failure (to be made an
  ordinary row) the day that issue lands.
* :func:`na`: the row tests something with no counterpart here (a Go helper, a nil request); skipped.

Every row is also recorded in :data:`REGISTRY`, which scripts/fabio_rows.py counts for the block at the top
of docs/compat.md. Case ids are ``<fabio test>/<fabio row>``, so ours and theirs can be read side by side.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

KINDS = ("agree", "differs", "waiting", "n/a")


@dataclass(frozen=True)
class Outcome:
    kind: str  # one of KINDS
    note: str = ""  # differs: the docs/compat.md text; waiting: the feature; n/a: why
    issue: int = 0  # waiting: the issue that brings the feature
    ours: Any = None  # differs: what we do instead, the value the test asserts

    def want(self, fabio: Any) -> Any:
        """The value a row's test asserts: ours for a deliberate difference, else fabio's."""
        return self.ours if self.kind == "differs" else fabio


AGREE = Outcome("agree")


def differs(compat: str, ours: Any = None) -> Outcome:
    """A deliberate difference: `compat` is text of the docs/compat.md row that gives the reason, `ours`
    what we do instead (the value the row's test asserts in place of fabio's)."""
    return Outcome("differs", compat, ours=ours)


def waiting(issue: int, feature: str) -> Outcome:
    return Outcome("waiting", feature, issue)


def na(why: str) -> Outcome:
    return Outcome("n/a", why)


GZIP = waiting(19, "gzip compression (proxy.gzip.contenttype)")


@dataclass(frozen=True)
class Row:
    id: str
    values: tuple[Any, ...]
    outcome: Outcome


def row(id: str, *values: Any, outcome: Outcome = AGREE) -> Row:
    return Row(id, values, outcome)


@dataclass(frozen=True)
class Recorded:
    fabio_file: str
    fabio_test: str
    row: str
    outcome: Outcome


REGISTRY: list[Recorded] = []
_SEEN: set[tuple[str, str, str]] = set()


def _case_id(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def table(fabio_file: str, fabio_test: str, rows: Sequence[Row]) -> list[Any]:
    """The pytest params of one fabio table, each named `<fabio_test>/<row>`, recorded for the counts."""
    out = []
    for r in rows:
        key = (fabio_file, fabio_test, r.id)
        if key in _SEEN:
            raise ValueError(f"{fabio_file} {fabio_test}: two rows named {r.id!r}")
        _SEEN.add(key)
        REGISTRY.append(Recorded(fabio_file, fabio_test, r.id, r.outcome))
        marks: list[Any] = []
        if r.outcome.kind == "waiting":
            reason = f"waits for issue {r.outcome.issue}: {r.outcome.note}"
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        elif r.outcome.kind == "n/a":
            marks.append(pytest.mark.skip(reason=f"not applicable: {r.outcome.note}"))
        out.append(pytest.param(*r.values, r.outcome, id=_case_id(f"{fabio_test}/{r.id}"), marks=marks))
    return out


def record(fabio_file: str, fabio_test: str, rows: Sequence[Row]) -> None:
    """Count the rows of a table that has no test here (every row not applicable), without cases."""
    assert all(r.outcome.kind == "n/a" for r in rows)
    table(fabio_file, fabio_test, rows)


def counts(records: Iterable[Recorded] | None = None) -> dict[str, dict[str, int]]:
    """fabio file -> {rows, agree, differs, waiting, n/a}."""
    out: dict[str, dict[str, int]] = {}
    for rec in REGISTRY if records is None else records:
        c = out.setdefault(rec.fabio_file, {"rows": 0, **{k: 0 for k in KINDS}})
        c["rows"] += 1
        c[rec.outcome.kind] += 1
    return out
