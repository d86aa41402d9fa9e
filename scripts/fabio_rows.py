"""Count the ported rows of fabio's test tables (tests/fabio/) per fabio file and outcome, and keep the count
block at the top of docs/compat.md in step with them.

    python scripts/fabio_rows.py           # print the block
    python scripts/fabio_rows.py --write   # write it into docs/compat.md
    python scripts/fabio_rows.py --check   # exit 1 if docs/compat.md's block is not what the tables say

The rows are counted from the tables themselves (tests/fabio/rows.py records each row and its outcome when
a module is imported), so the numbers cannot drift from what the tests check; tests/fabio/test_counts.py
runs the check in `make test`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "docs" / "compat.md"
BEGIN = "<!-- fabio-rows: begin (written by scripts/fabio_rows.py --write; do not edit by hand) -->"
END = "<!-- fabio-rows: end -->"


def load_tables() -> list:
    """Import every tests/fabio/test_*.py module; returns the recorded rows."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.fabio import rows

    for path in sorted((ROOT / "tests" / "fabio").glob("test_*.py")):
        importlib.import_module(f"tests.fabio.{path.stem}")
    return list(rows.REGISTRY)


def block(records: list) -> str:
    from tests.fabio.rows import KINDS, counts

    per_file = counts(records)
    total = Counter({k: 0 for k in ("rows", *KINDS)})
    for c in per_file.values():
        total.update(c)
    waiting = Counter(r.outcome.issue for r in records if r.outcome.kind == "waiting")
    features: dict[int, list[str]] = {}
    for r in records:
        if r.outcome.kind == "waiting" and r.outcome.note not in features.setdefault(r.outcome.issue, []):
            features[r.outcome.issue].append(r.outcome.note)
    lines = [
        BEGIN,
        "## fabio's own test tables",
        "",
        "fabio's table-driven tests are ported row by row to `tests/fabio/` (one test case per row, named",
        "`<fabio test>/<row>`, so ours and theirs read side by side; proxy rows run through a real router process",
        f"and real backends). **{total['rows']} rows**: {total['agree']} agree, {total['differs']} are deliberate "
        "differences (each such row's test",
        "quotes the line of this page that gives the reason), "
        f"{total['waiting']} wait for a feature (strict expected failures that name",
        f"the issue bringing it), {total['n/a']} do not apply.",
        "",
        "| fabio test file | rows | agree | differ | waiting | n/a |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(per_file):
        c = per_file[name]
        lines.append(f"| `{name}` | {c['rows']} | {c['agree']} | {c['differs']} | {c['waiting']} | {c['n/a']} |")
    lines.append(f"| **all** | **{total['rows']}** | **{total['agree']}** | **{total['differs']}** | "
                 f"**{total['waiting']}** | **{total['n/a']}** |")
    lines.append("")
    for issue in sorted(waiting):
        lines.append(f"- waiting for issue {issue}: {waiting[issue]} rows ({'; '.join(features[issue])})")
    lines.append(END)
    return "\n".join(lines)


def with_block(doc: str, new: str) -> str:
    """`doc` with its count block replaced by `new` (inserted before the first `## ` heading if absent)."""
    if BEGIN in doc and END in doc:
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + new + tail
    head, sep, tail = doc.partition("\n## ")
    return head + "\n" + new + "\n" + sep + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the block into docs/compat.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/compat.md's block is stale")
    args = ap.parse_args(argv)
    new = block(load_tables())
    doc = COMPAT.read_text()
    if args.write:
        COMPAT.write_text(with_block(doc, new))
        return 0
    if args.check:
        if with_block(doc, new) != doc:
            print("docs/compat.md: the fabio row counts are stale; run python scripts/fabio_rows.py --write",
                  file=sys.stderr)
            return 1
        return 0
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
