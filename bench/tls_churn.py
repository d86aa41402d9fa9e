"""RSS of the router while TLS connections come and go (issue 16): rounds of new TLS connections, each
doing one request and closing, over HTTP/1.1 and HTTP/2 (ALPN), and the router's RSS after every round.

    .venv/bin/python bench/tls_churn.py [--rounds 7] [--conns 1000] [--concurrency 50] [--protos h1,h2]
                                        [--client python|h2load] [--probe-trim] [--probe-collect]
                                        [--env MALLOC_ARENA_MAX=2] [--base DIR]

The router runs as in bench/tls_bench.py (same trustme certificate, static routes, one worker, nginx
backend), started through this file's probe (`--probe`), which answers SIGUSR1 by writing what the
process holds to a JSON file: RSS, glibc's heap figures (mallinfo2: bytes in use, free bytes kept, mmapped
bytes, number of arenas as seen in /proc/PID/smaps), Python's allocated blocks, gc-tracked objects by type
(SSL objects, protocols, nghttp2 sessions) and, with `--tracemalloc`, the Python allocations that grew.
`--probe-trim` asks it to call malloc_trim(0) after each round and reports RSS before and after: what
glibc was keeping free, not what anything still uses. The clients are Python (asyncio + ssl, the `h2`
package for HTTP/2), a fresh SSL context per round so that every handshake is a full one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import shlex
import signal
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import BENCH_BODY, Procs, free_port, log  # noqa: E402
from bench.tls_bench import (  # noqa: E402
    NAME,
    certs_and_backend,
    load_average,
    remove_work_dir,
    start_targets,
    tree_cpu,
    work_dir,
)

# --------------------------------------------------------------------------- the probe (in the router)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def probe_stats(trim: bool, snap: list, collect: bool = False) -> dict:
    libc = _libc()
    out: dict = {"rss_kb": _rss_kb()}
    if collect:  # what only the cyclic collector would free: garbage, not held
        out["gc_unreachable"] = gc.collect()
    if trim:
        t0, c0 = time.perf_counter(), time.thread_time()
        libc.malloc_trim(0)
        out["trim_ms"] = (time.perf_counter() - t0) * 1e3  # wall clock: the event loop's pause
        out["trim_cpu_ms"] = (time.thread_time() - c0) * 1e3
        out["rss_after_trim_kb"] = _rss_kb()
    with contextlib.suppress(AttributeError):
        libc.mallinfo2.restype = _MallInfo2
        t0 = time.perf_counter()
        mi = libc.mallinfo2()
        out["mallinfo_us"] = (time.perf_counter() - t0) * 1e6  # what router/run/heap.py's check costs
        out["malloc"] = {"arena_kb": mi.arena >> 10, "mmap_kb": mi.hblkhd >> 10, "in_use_kb": mi.uordblks >> 10,
                         "free_kb": mi.fordblks >> 10}
    out["py_blocks"] = sys.getallocatedblocks()
    counts: dict[str, int] = {}
    for o in gc.get_objects():
        n = type(o).__name__
        counts[n] = counts.get(n, 0) + 1
    watch = {"SSLObject", "_SSLSocket", "SSLProtocol", "SSLTransport", "_SSLProtocolTransport", "H2", "Http1",
             "TLSHttp1", "Negotiated", "Session", "Stream", "TCPTransport", "SSLContext"}
    out["objects"] = {k: v for k, v in counts.items() if k in watch}
    # the server-side session cache of every SSL context (TLS 1.2 sessions; TLS 1.3 tickets are stateless)
    out["ssl_sessions"] = sum(o.session_stats()["number"] for o in gc.get_objects() if isinstance(o, ssl.SSLContext))
    out["gc_objects"] = sum(counts.values())
    import tracemalloc
    if tracemalloc.is_tracing():
        now = tracemalloc.take_snapshot()
        if snap:
            out["tracemalloc_growth"] = [str(s) for s in now.compare_to(snap[0], "lineno")[:8]]
        else:
            snap.append(now)
        out["tracemalloc_kb"] = tracemalloc.get_traced_memory()[0] >> 10
    return out


def probe_main(argv: list[str]) -> None:
    """`tls_churn.py --probe [--probe-trim] -m router ARGS`: the router, answering SIGUSR1 with its figures."""
    import runpy
    trim = "--probe-trim" in argv
    collect = "--probe-collect" in argv
    rest = argv[argv.index("-m") + 2:]
    path = os.environ["TLS_CHURN_PROBE"]
    if os.environ.get("TLS_CHURN_TRACEMALLOC"):
        import tracemalloc
        tracemalloc.start(4)
    snap: list = []

    def on_usr1(_sig: int, _frame: object) -> None:
        Path(path + ".tmp").write_text(json.dumps(probe_stats(trim, snap, collect)))
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, on_usr1)
    # the router from PYTHONPATH (bench/tls_bench.py's start_targets: this checkout or --base), not the
    # checkout this file is in
    here = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [p for p in sys.path if p != here]
    assert not [m for m in sys.modules if m == "router" or m.startswith("router.")], "router imported too early"
    sys.argv = ["router", *rest]
    runpy.run_module("router", run_name="__main__", alter_sys=True)


def ask(pid: int, path: Path, timeout: float = 20) -> dict:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise RuntimeError("probe did not answer")


# --------------------------------------------------------------------------- the clients


async def one_h1(port: int, ctx: ssl.SSLContext) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME)
    try:
        writer.write(f"GET /bench HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
        return data.startswith(b"HTTP/1.1 200") and data.endswith(BENCH_BODY.encode())
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def one_h2(port: int, ctx: ssl.SSLContext) -> bool:
    import h2.connection
    import h2.events
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME)
    try:
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", NAME), (":path", "/bench")],
                          end_stream=True)
        writer.write(conn.data_to_send())
        status, body = None, b""
        while True:
            data = await reader.read(65536)
            if not data:
                return False
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status")
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    conn.close_connection()
                    writer.write(conn.data_to_send())
                    return status == b"200" and body == BENCH_BODY.encode()
            writer.write(conn.data_to_send())
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def churn(port: int, ca: Path, proto: str, conns: int, concurrency: int) -> int:
    """`conns` new TLS connections, `concurrency` at once; the number that failed."""
    ctx = ssl.create_default_context(cafile=str(ca))  # a fresh context: no session to resume
    ctx.set_alpn_protocols(["h2"] if proto == "h2" else ["http/1.1"])
    one = one_h2 if proto == "h2" else one_h1
    sem = asyncio.Semaphore(concurrency)
    failed = 0

    async def run() -> None:
        nonlocal failed
        async with sem:
            try:
                ok = await asyncio.wait_for(one(port, ctx), 30)
            except (TimeoutError, OSError, ssl.SSLError):
                ok = False
            failed += not ok

    await asyncio.gather(*(run() for _ in range(conns)))
    return failed


def churn_h2load(port: int, proto: str, conns: int, concurrency: int) -> int:
    """The same with h2load (C, no TLS session reuse): `conns` connections of one request each."""
    import re
    import subprocess
    argv = ["h2load", *(["--h1"] if proto == "h1" else []), f"-n{conns}", f"-c{min(concurrency, conns)}", "-m1",
            "-t1", f"https://127.0.0.1:{port}/bench"]
    # -n equal to -c: one request per connection, all at once (h2load spreads -n over its -c clients)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    return conns - int(m.group(1)) if m else conns


# --------------------------------------------------------------------------- the run


def main() -> int:
    if "--probe" in sys.argv:
        probe_main(sys.argv)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--conns", type=int, default=1000, help="new TLS connections per round (and protocol)")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--protos", default="h1,h2", help="h1, h2 or both (each round runs each)")
    ap.add_argument("--client", choices=("python", "h2load"), default="python",
                    help="h2load: rounds of --conns at once (-n = -c = conns), as the issue's first measure")
    ap.add_argument("--base", type=Path, help="run that checkout of the router instead of this one")
    ap.add_argument("--settle", type=float, default=6, help="seconds between a round's end and its figures "
                    "(longer than router/run/heap.py's check interval)")
    ap.add_argument("--probe-trim", action="store_true", help="malloc_trim(0) in the router after each round")
    ap.add_argument("--probe-collect", action="store_true", help="gc.collect() in the router before each probe")
    ap.add_argument("--tracemalloc", action="store_true", help="trace Python allocations in the router (slow)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the router (MALLOC_ARENA_MAX=2)")
    args = ap.parse_args()
    protos = [p.strip() for p in args.protos.split(",") if p.strip()]
    command = shlex.join(["python", "bench/tls_churn.py", *sys.argv[1:]])
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = work_dir("tls-churn-")
    probe = tmp / "probe.json"
    try:
        web = certs_and_backend(procs, tmp)
        env = dict(e.split("=", 1) for e in args.env)
        env["TLS_CHURN_PROBE"] = str(probe)
        if args.tracemalloc:
            env["TLS_CHURN_TRACEMALLOC"] = "1"
        prefix = [str(Path(__file__).resolve()), "--probe", *(["--probe-trim"] if args.probe_trim else []),
                  *(["--probe-collect"] if args.probe_collect else [])]
        name = "base" if args.base else "router"
        targets = start_targets([name], procs, tmp, web, free_port(), 60, args.base, prefix=prefix, extra_env=env)
        if name not in targets:
            raise SystemExit(f"the router did not start: see {tmp}/{name}.log")
        pid, port = targets[name]["pid"], targets[name]["port"]
        first = ask(pid, probe)
        log(f"{command}\nstart: RSS {first['rss_kb'] / 1024:.1f} MB  load {load_average()}")
        print(json.dumps(first))
        for rnd in range(1, args.rounds + 1):
            cpu0, failed, n = tree_cpu(pid), 0, 0
            for proto in protos:
                if args.client == "h2load":
                    failed += churn_h2load(port, proto, args.conns, args.conns)
                else:
                    failed += asyncio.run(churn(port, tmp / "ca.pem", proto, args.conns, args.concurrency))
                n += args.conns
            cpu = (tree_cpu(pid) - cpu0) / n * 1e6
            time.sleep(args.settle)  # the last connections' close callbacks (and the router's heap timer)
            st = ask(pid, probe)
            trim = (f" -> {st['rss_after_trim_kb'] / 1024:.1f} MB after malloc_trim ({st['trim_ms']:.1f} ms, "
                    f"{st['trim_cpu_ms']:.1f} ms CPU)"
                    if "rss_after_trim_kb" in st else "")
            m = st.get("malloc", {})
            log(f"round {rnd}: {n} conns ({failed} failed)  RSS {st['rss_kb'] / 1024:.1f} MB{trim}  "
                f"heap in use {m.get('in_use_kb', 0) / 1024:.1f} MB free {m.get('free_kb', 0) / 1024:.1f} MB "
                f"mmap {m.get('mmap_kb', 0) / 1024:.1f} MB (mallinfo2 {st.get('mallinfo_us', 0):.0f} µs)  gc freed {st.get('gc_unreachable', '-')}  "
                f"TLS sessions cached {st['ssl_sessions']}  py blocks {st['py_blocks']}  objects {st['objects']}  "
                f"{cpu:.0f} µs CPU/conn  load {load_average()}")
            for line in st.get("tracemalloc_growth", []):
                log(f"    {line}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        remove_work_dir(tmp)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
