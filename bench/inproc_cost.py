"""Python work per proxied request, without sockets: the listener, the core and the upstream client in one
process, both ends faked, so only our own code runs (no syscalls, no other process).

Why: on this shared machine wall-clock figures, and even CPU time per request, move with the load. This
drives the real `Http1` protocol (router/listen/http1.py) and the real upstream client
(router/proxy/upstream.py) through the configured `ProxyApp`: each of `--conns` client connections sends
`GET /bench`; its upstream connection (pooled, on a fake transport) answers what nginx answers for the
19-byte benchmark, one loop pass later; the client sends its next request when the answer is written.
Under callgrind the instruction count per request is exact to about 0.1 % whatever the load:

    python bench/inproc_cost.py --requests 20000                      # CPU µs per request (noisy)
    valgrind --tool=callgrind --instr-atstart=no python bench/inproc_cost.py --requests 3000 --callgrind
    # ... then bench/inproc_cost.py prints instructions per request (callgrind_control toggles the counting)
    python bench/inproc_cost.py --requests 300 --opcodes 30           # bytecodes and calls per request, by function

`--src` measures another checkout (run both, interleaved, for a before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 11:34:26 GMT\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 19\r\nConnection: keep-alive\r\n\r\nhello from backend\n")
REQUEST = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:9999\r\n\r\n"  # what wrk sends


class FakeTransport(asyncio.Transport):
    """Enough of a uvloop TCP transport for Http1 and the upstream client."""

    pauses = 0  # pause_reading() calls, all transports: a client connection pauses when a request queues

    def __init__(self, loop: asyncio.AbstractEventLoop, on_write) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.loop = loop
        self.on_write = on_write
        self.closing = False

    def write(self, data) -> None:  # type: ignore[no-untyped-def]
        self.on_write(data)

    def writelines(self, parts) -> None:  # type: ignore[no-untyped-def]
        self.on_write(b"".join(parts))

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def]
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 9999)}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:  # type: ignore[no-untyped-def]
        pass

    def pause_reading(self) -> None:
        FakeTransport.pauses += 1

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class OpcodeCount:
    """Bytecodes executed and Python calls made per function, through sys.settrace (slow: a few hundred
    requests are enough; the counts are exact). Where the interpreter's time goes, function by function,
    which callgrind cannot say of a Python program."""

    def __init__(self) -> None:
        import collections

        self.ops: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, int, str]] = collections.Counter()

    def trace(self, frame, event, arg):  # type: ignore[no-untyped-def]
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        if event == "call":  # also each resume of a coroutine
            self.calls[key] += 1
        frame.f_trace_opcodes = True
        ops = self.ops

        def local(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "opcode":
                ops[key] += 1
            return local

        return local

    def report(self, requests: int, top: int) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
        print(f"{sum(self.ops.values()) / requests:.0f} bytecodes and {sum(self.calls.values()) / requests:.0f} "
              f"Python calls per request (this script's own included); by function:")
        for key, n in self.ops.most_common(top):
            print(f"{n / requests:8.1f} {self.calls[key] / requests:5.2f}  {key[0].replace(root, '')}:{key[1]} {key[2]}")


async def run(requests: int, conns: int, callgrind: bool, config: list[str] | None = None,
              opcodes: OpcodeCount | None = None) -> float:
    from router.config.settings import load
    from router.listen.server import Listener
    from router.proxy.upstream_conn import UpstreamConn
    from router.run.assemble import build_proxy
    from router.table.routecmd import parse
    from router.table.state import RouterState

    loop = asyncio.get_running_loop()
    cfg = load(["-registry.backend", "static", "-proxy.workers", "1", *(config or [])])
    state = RouterState()
    cmds, _ = parse("route add b /bench http://127.0.0.1:18080/", "static")
    state.apply({"b": cmds})
    app = build_proxy(cfg, state)
    listener = Listener(app, max_head=cfg["proxy.maxheaderbytes"])
    listener.loop = loop
    upstream = app.upstream
    key = ("http", "127.0.0.1", 18080, True)
    done = asyncio.Event()

    def upstream_conn() -> UpstreamConn:
        conn = UpstreamConn(upstream, key, loop)

        def answer() -> None:
            buf = conn.get_buffer(-1)
            n = len(ANSWER)
            buf[:n] = ANSWER
            conn.buffer_updated(n)

        conn.connection_made(FakeTransport(loop, lambda data: loop.call_soon(answer)))
        return conn

    for _ in range(conns):
        upstream._put(upstream_conn())

    from router.listen.http1 import Http1

    # Each connection has one request in flight at a time, as wrk's: the next is sent only once the answer
    # to the previous one was written. (Until 2026-12-03 the warm-up's last answers arrived after the
    # measured phase had begun and each sent one more request, so most connections pipelined two and every
    # measured request paid a pause and a resume of reading that the real load never does.)
    to_send = [0]  # requests of the current phase not sent yet
    outstanding = [0]  # sent and not answered, over all connections
    inflight: dict[Http1, int] = {}
    most = [0]  # the largest number in flight on one connection: must stay 1

    def send(proto: Http1) -> None:
        to_send[0] -= 1
        outstanding[0] += 1
        n = inflight[proto] = inflight[proto] + 1
        if n > most[0]:
            most[0] = n
        loop.call_soon(proto.data_received, REQUEST)

    def client() -> Http1:
        proto = Http1(listener)
        inflight[proto] = 0

        def on_write(data: bytes) -> None:
            if data.endswith(b"hello from backend\n"):
                inflight[proto] -= 1
                outstanding[0] -= 1
                if to_send[0] > 0:
                    send(proto)
                elif outstanding[0] == 0:
                    done.set()

        proto.connection_made(FakeTransport(loop, on_write))
        return proto

    def phase(n: int) -> None:
        """Send `n` requests over the connections, one at a time each; `done` is set when all are answered."""
        done.clear()
        to_send[0] = n
        for proto in protos:
            if to_send[0] > 0:
                send(proto)

    protos = [client() for _ in range(conns)]
    phase(min(500, requests))
    await done.wait()  # warm-up
    phase(requests)
    pauses = FakeTransport.pauses
    if callgrind:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=False)
    if opcodes is not None:
        sys.settrace(opcodes.trace)
    t0 = time.process_time()
    await done.wait()
    used = time.process_time() - t0
    if opcodes is not None:
        sys.settrace(None)
    if callgrind:
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=False)
    if most[0] != 1 or any(inflight.values()):
        raise SystemExit(f"a connection had {most[0]} requests in flight at once (must be 1)")
    print(f"at most {most[0]} request in flight per connection; {listener.requests} answered; "
          f"{FakeTransport.pauses - pauses} pauses of reading while measured")
    return used / requests * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument("--callgrind", action="store_true", help="toggle callgrind's counting around the measured part")
    p.add_argument("--src", help="checkout to import the router from (default: this one)")
    p.add_argument("--opcodes", type=int, default=0, metavar="N",
                   help="count bytecodes and calls per request (sys.settrace) and list the N costliest functions")
    p.add_argument("--flags", default="", help='more router flags in one string, e.g. --flags="-proxy.stall.timeout 0"')
    a = p.parse_args()
    if a.src:
        sys.path.insert(0, os.path.abspath(a.src))
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import uvloop

    opcodes = OpcodeCount() if a.opcodes else None
    us = uvloop.run(run(a.requests, a.conns, a.callgrind, a.flags.split(), opcodes))
    if opcodes is not None:
        opcodes.report(a.requests, a.opcodes)
    else:
        print(f"{us:.2f} µs CPU per request ({a.requests} requests, {a.conns} connections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
