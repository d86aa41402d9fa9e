"""The demo service of deploy/docker-compose.yml: answers who it is, and drains on SIGTERM.

Standard library only, so its image is the Python base and this file. Every answer names the service
(SERVICE_NAME), the instance (the container ID, else the host name) and the path it received, so a client
of the router sees which container served it and what `strip=` did. `?sleep=S` (at most 30) answers after
S seconds: a request that is still in flight while something stops. POST, PUT, PATCH and DELETE answer as
GET does (their body is read and dropped).

SIGTERM: /health turns 503 at once (the Consul check Registrator made from SERVICE_CHECK_HTTP fails, and
the router takes the instance out of its table), every other request is still served for DRAIN_SECONDS,
then the process exits once the requests in flight are answered. That is how scaling the service down
loses no request through the router.

Environment: PORT (8080; 0 picks a free port, printed on stdout), ADDR (0.0.0.0), SERVICE_NAME (demo),
DRAIN_SECONDS (5).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def instance_id() -> str:
    """The container ID from the cgroup path (cgroup v1 and v2 under Docker), else the host name."""
    try:
        with open("/proc/self/cgroup") as f:
            m = re.search(r"[0-9a-f]{64}", f.read())
        if m:
            return m.group(0)[:12]
    except OSError:
        pass
    try:
        with open("/proc/self/mountinfo") as f:  # cgroup v2 with a private namespace: /containers/<id>/
            m = re.search(r"/containers/([0-9a-f]{64})/", f.read())
        if m:
            return m.group(1)[:12]
    except OSError:
        pass
    return socket.gethostname()


class State:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.lock = threading.Lock()


STATE = State()
SERVICE = os.environ.get("SERVICE_NAME", "demo")
INSTANCE = instance_id()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the router pools its upstream connections
    server_version = "consul-router-demo"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request would drown the stack's logs

    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        if url.path == "/health":
            self._send(503 if STATE.draining else 200, "draining\n" if STATE.draining else "ok\n")
            return
        with STATE.lock:
            STATE.in_flight += 1
        try:
            try:
                delay = min(float(parse_qs(url.query).get("sleep", ["0"])[0]), 30.0)
            except ValueError:
                self._send(400, f"bad sleep value in {url.query!r}\n")
                return
            if delay > 0:
                time.sleep(delay)
            host = self.headers.get("Host", "")
            self._send(200, f"service={SERVICE} instance={INSTANCE} path={url.path} host={host}\n")
        finally:
            with STATE.lock:
                STATE.in_flight -= 1

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        """The body is read (so the connection stays usable) and dropped; the answer is GET's: who answered."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    do_PUT = do_PATCH = do_DELETE = do_POST


def main() -> int:
    port = int(os.environ.get("PORT", "8080"))
    drain = float(os.environ.get("DRAIN_SECONDS", "5"))
    server = ThreadingHTTPServer((os.environ.get("ADDR", "0.0.0.0"), port), Handler)
    server.daemon_threads = True  # idle keep-alive connections must not hold the exit
    print(f"{SERVICE} {INSTANCE} listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    stopped = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        STATE.draining = True
        print(f"{SERVICE} {INSTANCE}: SIGTERM, /health 503, serving {drain:g}s more", flush=True)
        threading.Timer(drain, stopped.set).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopped.wait()
    server.shutdown()  # no new connections; the requests already being answered finish below
    deadline = time.monotonic() + 30
    while STATE.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"{SERVICE} {INSTANCE}: drained, exit", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
