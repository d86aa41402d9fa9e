"""`-proxy.workers 2` with TLS and TCP listeners: every worker binds them (SO_REUSEPORT, as its HTTP one), serves
them, watches their certificates, and the main process sums the workers' TCP and certificate counters for
/metrics and /api/status. curl for HTTPS, plain sockets for TCP, `ss` for who listens."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.backends import Backend
from tests.router_proc import RouterProc, free_port
from tests.test_tcp_listeners import Echo, roundtrip


def listeners_of(port: int) -> set[int]:
    """The pids with a listening socket on `port` (ss -p)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


@pytest.mark.skipif(shutil.which("ss") is None or shutil.which("curl") is None, reason="ss and curl")
def test_tls_and_tcp_listeners_run_in_every_worker(tmp_path: Path) -> None:
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    leaf = ca.issue_cert("w.example.com")
    (certs / "w-cert.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (certs / "w-key.pem").write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    backend, echo = Backend("b1").start(), Echo()
    tport, cport = free_port(), free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f"route add web / http://127.0.0.1:{backend.port}/\nroute add db :{cport} tcp://127.0.0.1:{echo.port}",
                   "-proxy.workers", "2", env={"ROUTER_LISTENER": "own"})
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{tport};cs=c,127.0.0.1:{cport};proto=tcp",
                "-proxy.cs", f"cs=c;type=path;cert={certs}"]
    try:
        with r:
            assert r.proc is not None
            deadline = time.monotonic() + 15
            while len(ws := httpx.get(r.ui + "/api/status", timeout=5).json()["workers"]) < 2 or not all(
                    w["routes"] for w in ws):
                assert time.monotonic() < deadline, ws
                time.sleep(0.1)
            pids = {w["pid"] for w in ws}
            assert listeners_of(tport) == pids and listeners_of(cport) == pids  # in each worker, not in main

            # HTTPS only, fresh connections: both workers answer TLS requests
            sent = 0
            while not all(w["requests"] > 0 for w in httpx.get(r.ui + "/api/status", timeout=5).json()["workers"]):
                out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(tmp_path / "ca.pem"),
                                      "--resolve", f"w.example.com:{tport}:127.0.0.1"]
                                     + [f"https://w.example.com:{tport}/n{i}" for i in range(10)],
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0 and out.stdout.count("b1") == 10, out.stderr
                sent += 10
                time.sleep(0.6)  # workers report every 0.5 s
                assert sent < 400, "one worker never served a TLS request"

            for i in range(6):
                assert roundtrip(cport, b"tcp %d" % i) == b"tcp %d" % i
            deadline = time.monotonic() + 10
            while True:  # the main process shows the workers' sums
                text = httpx.get(r.ui + "/metrics", timeout=5).text
                if metric(text, 'consul_router_tcp_connections_total{kind="tcp"}') == 6:
                    break
                assert time.monotonic() < deadline, [x for x in text.splitlines() if "tcp_conn" in x]
                time.sleep(0.2)
            assert metric(text, "consul_router_tls_certificate_updates_total") == 2  # one set loaded per worker
            rows = {row["addr"]: row for row in httpx.get(r.ui + "/api/status", timeout=5).json()["listeners"]}
            assert rows[f"127.0.0.1:{tport}"]["certificates"] == ["w.example.com"]
    finally:
        backend.stop()
        echo.shutdown()
        echo.server_close()


def test_a_certificate_source_a_worker_cannot_load_stops_startup(tmp_path: Path) -> None:
    r = RouterProc("-registry.backend", "static", "-registry.static.routes", "", "-proxy.workers", "2")
    r.flags += ["-proxy.addr", f"127.0.0.1:{r.proxy_port},127.0.0.1:{free_port()};cs=c",
                "-proxy.cs", f"cs=c;type=file;cert={tmp_path / 'missing.pem'}"]
    with pytest.raises(RuntimeError) as e:
        r.start()
    r.stop()
    assert r.proc is not None and r.proc.returncode == 2  # a config error, as with one process
    assert "cs=c" in str(e.value) and "missing.pem" in str(e.value)
