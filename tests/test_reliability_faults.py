"""Issue 17's fault matrix end to end, with the shipped defaults: real instance processes (bench/faults.py),
one of three faulted under steady keep-alive load, then healed.

Assertions are counts, never durations: idempotent requests that failed (0 whenever another instance is
healthy), POSTs that reached two instances (0: a witness backend records every POST id it receives), the
healed instance answering again before the load ends, and in the all-failing row honest 503s with the
retries within the budget. The blackhole is real: the instance's port is held by a listener whose accept
queue is full, so SYNs are dropped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import run_row

RATE = 100.0  # requests/s from 16 clients; the machine is shared
HEAL = 4.0  # seconds of load after healing: twice proxy.eject.maxduration (2s), the longest ejection


@pytest.mark.parametrize("fault", ["killed", "blackholed", "stalled", "body-stalled", "slow", "failing", "reset"])
def test_one_bad_instance_costs_no_idempotent_request(fault: str, tmp_path: Path) -> None:
    row = run_row("router", fault, rate=RATE, baseline=2.0, during=4.0, after=HEAL, flags=[], tmp=tmp_path)
    print(f"{fault}: {row.requests} requests, outcomes {row.outcomes}, {row.slow} slower than 1 s, "
          f"POST failed {row.post_failed}, retries {row.retries}, hedges {row.hedges}, back after {row.back_after}s")
    assert row.requests > RATE * 8 * 0.5  # the load ran
    assert row.idem_failed == 0, row.outcomes
    assert row.post_twice == 0  # a POST never reaches two instances
    assert row.back_after is not None  # the healed instance answers again before the load ends
    if fault in ("blackholed", "stalled"):
        assert row.hedges and row.hedges > 0  # what kept the requests from waiting for the bad instance


def test_all_instances_failing_answers_honestly_within_the_retry_budget(tmp_path: Path) -> None:
    row = run_row("router", "all-failing", rate=RATE, baseline=2.0, during=4.0, after=2.0, flags=[], tmp=tmp_path)
    print(f"all-failing: {row.requests} requests, outcomes {row.outcomes}, retries {row.retries}, hedges {row.hedges}")
    assert set(row.outcomes) <= {"200", "503"}, row.outcomes  # the instances' own 503s, no hang, no 500
    assert row.outcomes.get("503", 0) > 0
    assert row.post_twice == 0
    # the budget: 10 retries/s (proxy.retry.budget.min) over its 10 s window plus 20% of the requests
    assert row.retries is not None and row.retries + (row.hedges or 0) <= 10 * 10 + 0.2 * row.requests
    # and far fewer than the 2 extra tries per failed request that proxy.retry.attempts=3 would allow
    assert row.retries < row.outcomes["503"]
