"""Issue 7, "Soak" (`make soak`): steady load on stable routes while other services churn every 100 ms.

Every tick one service is registered, one flips health and one is deregistered. The router's RSS and open
file descriptors are sampled from /proc; the figures are written into docs/reliability.md between the
soak markers, with the command that produced them. SOAK_SECONDS shortens the run (default 600).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import re
import statistics
import time
from pathlib import Path

import pytest

from tests.backend_proc import BackendProc, Load
from tests.consul_helpers import deregister, make_client, register, set_check, uid, wait_until
from tests.router_proc import ROOT, RouterProc
from tests.test_churn import table_rows

pytestmark = [pytest.mark.consul, pytest.mark.soak]

REPORT = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert m
    return int(m.group(1))


def fds(pid: int, consul_port: int) -> tuple[int, int]:
    """(open fds other than connections to Consul, connections to Consul).

    The Consul client pools keep-alive connections (4 watches plus up to 16 idle ones that the per-service
    reads reuse, closed after 30 s idle), so their number follows the churn; it is bounded separately.
    """
    to_consul: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[2].rsplit(":", 1)[1], 16) == consul_port:
                    to_consul.add(cols[9])  # the socket's inode
    other = consul = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in to_consul:
                consul += 1
            else:
                other += 1
    return other, consul


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind (socket, pipe, anon_inode:[eventpoll], a file's path): what a growth consists of."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kind = target.split(":[", 1)[0] if ":[" in target else target
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def write_report(text: str) -> None:
    doc = REPORT.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    REPORT.write_text(doc[:start] + "\n" + text + doc[end:])


def test_soak(consul_agent) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    # RSS ramps in the first minute (38 -> ~60 MiB: caches, pools and allocator arenas reaching their working
    # size), and where the ramp ends varies by tens of seconds; growth is judged from two minutes on.
    warmup = min(120.0, seconds / 5)
    rate = 100.0
    c = make_client(consul_agent.port)
    stable = [BackendProc(f"stable{i}").start() for i in range(2)]
    prefix = f"soak-{uid()}"
    for i, p in enumerate(stable):
        # A TTL longer than the run: the helpers' default (10 min) lapses at the very end of a full soak.
        register(c, f"{prefix}-stable{i}", f"{prefix}-stable{i}", p.port, tags=[f"urlprefix-/{prefix}/s{i}"],
                 ttl="24h")
    router = RouterProc("-registry.consul.addr", consul_agent.addr, "-registry.consul.kvpath",
                        f"/t-{uid()}/config").start()
    loads: list[Load] = []
    try:
        wait_until(lambda: len(table_rows(router, f"{prefix}-stable")) == 2, timeout=15, message="stable routes")
        pid = router.proc.pid  # type: ignore[union-attr]
        loads = [Load(router.url + f"/{prefix}/s{i}", rate=rate / 2, threads=4).start() for i in range(2)]
        rng = random.Random(7)
        live: list[str] = []
        seq = ticks = 0
        samples: list[tuple[float, int, int, int]] = []  # (t, rss KiB, fds, connections to Consul)
        kinds: list[tuple[float, dict[str, int]]] = []
        t0 = next_sample = time.monotonic()
        while (now := time.monotonic()) - t0 < seconds:
            seq += 1
            sid = f"{prefix}-churn{seq}"
            register(c, f"{prefix}-churn", sid, 40000 + seq % 20000, tags=[f"urlprefix-/{prefix}/churn"])
            live.append(sid)
            set_check(c, rng.choice(live), rng.choice(("passing", "critical")))
            if len(live) > 20:
                deregister(c, live.pop(0))
            ticks += 1
            if now >= next_sample:
                samples.append((now - t0, rss_kib(pid), *fds(pid, consul_agent.port)))
                kinds.append((now - t0, fd_kinds(pid)))
                next_sample += 5
            time.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
        for ld in loads:
            ld.stop()
        samples.append((time.monotonic() - t0, rss_kib(pid), *fds(pid, consul_agent.port)))
        after = [s for s in samples if s[0] >= warmup]
        base_rss = statistics.median(s[1] for s in after[:3])
        end_rss = statistics.median(s[1] for s in after[-3:])
        # A leak raises the floor; client and upstream connections opening and closing between samples do
        # not: the fewest fds over the last three samples must not exceed the most over the first three.
        base_fd = max(s[2] for s in after[:3])
        end_fd = min(s[2] for s in after[-3:])
        most_consul = max(s[3] for s in samples)
        total = sum(ld.total for ld in loads)
        failed = sum(ld.failed for ld in loads)
        growth = (end_rss - base_rss) / base_rss * 100
        env = "" if seconds == 600 else f"SOAK_SECONDS={seconds:g} "
        cmd = f"{env}pytest -q -s -m soak tests/test_reliability_soak.py"
        write_report("\n".join([
            f"Run {datetime.date.today().isoformat()} with `{cmd}` (the soak part of `make soak`), "
            f"{os.cpu_count()} CPUs, load {rate:g} req/s on two stable routes:",
            "",
            "| figure | value |",
            "|---|---|",
            f"| duration | {seconds:g} s (warm-up {warmup:g} s) |",
            f"| churn ticks (register + flip + deregister each) | {ticks} ({ticks / seconds:.1f}/s) |",
            f"| requests on the stable routes | {total} ({total / seconds:.0f}/s) |",
            f"| failed requests on the stable routes | {failed} |",
            f"| router RSS after warm-up -> end | {base_rss / 1024:.1f} MiB -> {end_rss / 1024:.1f} MiB "
            f"({growth:+.1f} %) |",
            f"| router open fds after warm-up (most of 3 samples) -> end (fewest of 3), without its connections "
            f"to Consul | {base_fd} -> {end_fd} |",
            f"| router RSS every minute (MiB) | {' / '.join(f'{x[1] / 1024:.1f}' for x in samples[::12])} |",
            f"| router connections to Consul, most at any sample (bound: 4 watches + 1 dump + 16 reads + 16 pooled) | "
            f"{most_consul} |",
            "",
        ]))
        print(f"soak: {ticks} ticks, {total} requests, {failed} failed, RSS {base_rss}->{end_rss} KiB "
              f"({growth:+.1f}%), fds {base_fd}->{end_fd}, connections to Consul at most {most_consul}")
        print("RSS MiB every minute:", [round(s[1] / 1024, 1) for s in samples[::12]])
        print("open fds by kind after warm-up, at the end:", [k for k in kinds if k[0] >= warmup][:1], kinds[-1:])
        if failed:
            wall0 = time.time() - (time.monotonic() - t0)
            print("failures at", sorted({round(t - wall0, 1) for ld in loads for t, _ in ld.failures}))
            print(router.output()[-4000:])
        assert failed == 0, [ld.outcomes for ld in loads]
        assert growth < 10, samples
        assert end_fd <= base_fd, (samples, [k for k in kinds if k[0] >= warmup][:3], kinds[-3:])
        assert most_consul <= 4 + 1 + 16 + 16, samples
    finally:
        for ld in loads:
            ld.stop()
        router.stop()
        for p in stable:
            p.stop()
