"""What a slow-read attack costs the router, and what legitimate clients see meanwhile (issue 15).

slowhttptest `-X` opens N connections that ask for a large answer and read it a few bytes at a time. This
measures, in one run, side by side:

* the router's RSS (main process plus workers) idle and at its peak during the attack, and that growth per
  slow connection the router held (its open client sockets at the peak, counted from /proc);
* the kernel's TCP memory (/proc/net/sockstat `TCP mem`, pages), which the attack fills on loopback;
* a legitimate client's latency (small answers, back to back) for the same time without the attack and
  during it: p50, p99, failures.

    python bench/slow_read.py --connections 1000 --answer 1048576 --seconds 30
    python bench/slow_read.py --connections 200 --answer 8388608 --workers 2

Run on a quiet machine for the latency figures; the load average is printed with them. `make bench-slow`
runs the issue's attack (1,000 connections, 1 MiB answers) and an 8 MiB one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import nginx_conf  # noqa: E402
from tests.router_proc import ROOT, RouterProc, free_port, wait_port  # noqa: E402

SLOWHTTPTEST = shutil.which("slowhttptest") or "/usr/bin/slowhttptest"


def pids(root: int) -> list[int]:
    """`root` and its children (the workers), from /proc."""
    out = [root]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int(p.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                out.append(int(p.name))
    return out


def rss_kib(pid: int) -> int:
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def clients(port: int) -> int:
    """Established connections to the proxy port (/proc/net/tcp: local address, state 01)."""
    tail = f":{port:04X}"
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        n += f[1].endswith(tail) and f[3] == "01"
    return n


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


def tcp_mem_pages() -> int:
    m = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
    return int(m.group(1)) if m else 0


Series = dict[str, tuple[list[float], int]]


def legit(urls: dict[str, str], stop: threading.Event) -> Series:
    """Small requests to each of `urls` in turn, 20 ms apart, until `stop`: latencies (s) and failures per
    name (the same client and moment for each, so the origin's own latency is the control)."""
    out: Series = {name: ([], 0) for name in urls}
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            for name, url in urls.items():
                t0 = time.perf_counter()
                try:
                    r = client.get(url)
                    ok = r.status_code == 200 and r.text == "ok\n"
                except httpx.HTTPError:
                    ok = False
                lat, failed = out[name]
                lat.append(time.perf_counter() - t0)
                out[name] = (lat, failed + (not ok))
            time.sleep(0.02)
    return out


def summary(lat: list[float], failed: int) -> str:
    if not lat:
        return "no requests"
    s = sorted(lat)
    p99 = s[int(0.99 * (len(s) - 1))]
    return (f"{len(s)} requests, {failed} failed, p50 {1000 * statistics.median(s):.1f} ms, "
            f"p99 {1000 * p99:.1f} ms, max {1000 * s[-1]:.1f} ms")


def timed(urls: dict[str, str], seconds: float) -> Series:
    """legit() for `seconds` in a process of its own: in this one, the sampler's reads of /proc (thousands
    of sockets) would hold the GIL while requests are timed."""
    out = subprocess.run([sys.executable, __file__, "--client", json.dumps(urls), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return {k: (v[0], v[1]) for k, v in json.loads(out).items()}


def client_main(urls: str, seconds: str) -> None:
    stop = threading.Event()
    threading.Timer(float(seconds), stop.set).start()
    print(json.dumps(legit(json.loads(urls), stop)))


def start_origin(kind: str, port: int, answer: int, tmp: Path) -> subprocess.Popen:
    """/public/ok answers "ok\\n", /public/big `answer` bytes (/public/big1m 1 MiB)."""
    if kind == "python":
        return subprocess.Popen([sys.executable, "-m", "tests.test_slow_clients", str(port)], cwd=ROOT,
                                env={**os.environ, "SLOW_ANSWER": str(answer)})
    tmp.chmod(0o755)  # nginx's workers may run as another user (nobody) when started by root
    files = tmp / "files"
    files.mkdir()
    for name, size in (("big", answer), ("big1m", 1 << 20)):
        with open(files / name, "wb") as f:
            f.truncate(size)
    server = f"""server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /public/ok {{ default_type text/plain; return 200 "ok\\n"; }}
    location /public/ {{ alias {files}/; }}
  }}"""
    conf = tmp / "origin.conf"
    conf.write_text(nginx_conf(tmp, "origin", 1, server))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen([nginx, "-p", str(tmp), "-e", str(tmp / "origin-error.log"), "-c", str(conf)],
                            start_new_session=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--answer", type=int, default=1 << 20, help="bytes of the slow-read answer")
    ap.add_argument("--seconds", type=int, default=30, help="length of the attack (and of the baseline)")
    ap.add_argument("--workers", type=int, default=1, help="proxy.workers")
    ap.add_argument("--flags", nargs="*", default=[], help="more router flags")
    ap.add_argument("--origin", choices=("nginx", "python"), default="nginx",
                    help="nginx (sendfile: not the bottleneck, so the legitimate latency is the router's) or the "
                         "test suite's asyncio origin (tests/test_slow_clients.py), which the attack saturates")
    ap.add_argument("--py-spy", metavar="FILE", help="record the serving process with py-spy (raw format) "
                                                   "for half the attack")
    args = ap.parse_args()

    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="slow-read-"))
    origin = start_origin(args.origin, port, args.answer, tmp)
    try:
        wait_port(port, timeout=15)
        routes = f"route add svc /public http://127.0.0.1:{port}/"
        with RouterProc.static(routes, "-proxy.maxconn", "4000", "-proxy.workers", str(args.workers),
                               *args.flags) as router:
            root = router.proc.pid  # type: ignore[union-attr]
            ok_url = {"through the router": router.url + "/public/ok",
                      "direct to the origin": f"http://127.0.0.1:{port}/public/ok"}
            time.sleep(1)
            idle = sum(rss_kib(p) for p in pids(root))
            mem0 = tcp_mem_pages()
            c0 = cpu_seconds(pids(root))
            base = timed(ok_url, args.seconds)  # the baseline, without the attack
            base_cpu = cpu_seconds(pids(root)) - c0

            peak = {"rss": idle, "socks": 0, "tcp": mem0}
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    ps = pids(root)
                    rss = sum(rss_kib(p) for p in ps)
                    if rss > peak["rss"]:
                        peak["rss"] = rss
                    peak["socks"] = max(peak["socks"], clients(router.proxy_port))
                    peak["tcp"] = max(peak["tcp"], tcp_mem_pages())
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            tool = subprocess.Popen([SLOWHTTPTEST, "-X", "-c", str(args.connections),
                                     "-r", str(max(args.connections // 2, 50)), "-l", str(args.seconds + 3),
                                     "-p", "3", "-w", "512", "-y", "1024", "-n", "1", "-z", "32", "-k", "1",
                                     "-u", router.url + ("/public/big1m" if args.answer == 1 << 20 else "/public/big")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(3)  # let the slow connections open
            spy = None
            if args.py_spy:  # the worker (the main process serves nothing itself with several)
                target = pids(root)[-1]
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw",
                                        "-d", str(max(args.seconds // 2, 1)), "-o", args.py_spy, "-p", str(target)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            c0 = cpu_seconds(pids(root))
            during = timed(ok_url, args.seconds)
            attack_cpu = cpu_seconds(pids(root)) - c0
            if spy is not None:
                spy.wait()
            out = tool.communicate()[0]
            stop.set()
            sampler.join()
    finally:
        origin.terminate()
        origin.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    states = {k: [int(n) for n in re.findall(rf"{k}:\s*(?:\x1b\[[0-9;]*m)*\s*(\d+)", out)]
              for k in ("connected", "closed", "error")}
    # slow connections: as many as slowhttptest had connected at most, if the router held that many open
    held = max(min(max(states["connected"], default=0), peak["socks"] - 1), 1)
    grown = peak["rss"] - idle
    print(f"slow read: {args.connections} connections asking for {args.answer} bytes, {args.seconds} s, "
          f"proxy.workers={args.workers}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(f"  router RSS {idle // 1024} -> peak {peak['rss'] // 1024} MiB (+{grown / 1024:.0f} MiB); "
          f"{held} slow connections: {grown / held:.0f} KiB each")
    print(f"  kernel TCP memory {mem0 * 4 // 1024} -> peak {peak['tcp'] * 4 // 1024} MiB "
          f"(tcp_mem {Path('/proc/sys/net/ipv4/tcp_mem').read_text().strip()} pages)")
    print(f"  router CPU: {base_cpu:.1f} s without the attack, {attack_cpu:.1f} s during it ({args.seconds} s each)")
    for name in ok_url:
        print(f"  legitimate {name}, without the attack: {summary(*base[name])}")
        print(f"  legitimate {name}, during the attack:  {summary(*during[name])}")
    print("  slowhttptest at its end: " + ", ".join(f"{k} {v[-1]}" for k, v in states.items() if v))
    if "slow read" not in out.lower():
        print(out[-2000:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_main(*sys.argv[2:4])
    else:
        main()
