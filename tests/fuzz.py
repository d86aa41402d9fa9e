"""How many examples the property tests draw. `make test` must stay fast (its whole run has a 15-minute
budget), so the hypothesis tests draw a modest number there; `make fuzz` (FUZZ_SCALE=10) draws ten times as
many to explore further. A case found that way becomes a fixed test."""

from __future__ import annotations

import os


def examples(n: int) -> int:
    """`n` for `make test`, scaled by FUZZ_SCALE (an integer, default 1) for the long runs."""
    return n * max(1, int(os.environ.get("FUZZ_SCALE", "1") or 1))
