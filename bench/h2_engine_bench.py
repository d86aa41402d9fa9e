"""CPU per HTTP/2 request cycle of the protocol engine alone, python-hyper `h2` against libnghttp2 (through
cffi, router/proxy/nghttp2.py): one connection, rounds of 10 concurrent GET streams (h2load's headers), each
answered with HEADERS (:status, content-type, content-length, date, server) and one DATA frame with
END_STREAM. Only the server side's calls are timed (process CPU time); the client is h2 in both cases and
acknowledges what the server sends, so HPACK's dynamic table and the windows evolve as on a real connection.

    python bench/h2_engine_bench.py [--rounds 2000] [--streams 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

from router.proxy import nghttp2 as ng  # noqa: E402

BODY = b"hello from nginx!\n"
ANSWER = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY)),
          (b"date", b"Thu, 03 Dec 2026 15:00:00 GMT"), (b"server", b"nginx/1.22.1")]


def request(i: int) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":path", b"/bench"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:9999"),
            (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0")]


class H2Server:
    def __init__(self) -> None:
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.c = h2.connection.H2Connection(cfg)
        self.c.initiate_connection()

    def feed(self, data: bytes) -> bytes:
        for ev in self.c.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.c.send_headers(ev.stream_id, ANSWER)
                self.c.send_data(ev.stream_id, BODY, end_stream=True)
        return self.c.data_to_send()


class NgServer:
    def __init__(self) -> None:
        self.s = ng.Session(server=True)
        self.s.open(self)
        self.s.settings({ng.SETTINGS_MAX_CONCURRENT_STREAMS: 100, ng.SETTINGS_ENABLE_PUSH: 0})
        self.heads: dict[int, list] = {}
        self.ready: list[int] = []
        self.out: dict[int, bytes] = {}

    def on_begin_headers(self, sid: int) -> int:
        self.cur = self.heads[sid] = []
        return 0

    def on_header(self, name: bytes, value: bytes) -> int:
        self.cur.append((name, value))
        return 0

    def on_frame(self, kind: int, flags: int, sid: int, frame: object) -> int:
        if kind == ng.HEADERS:
            self.ready.append(sid)
        return 0

    def on_data(self, sid: int, data: bytes) -> int:
        return 0

    def on_close(self, sid: int, code: int) -> int:
        self.heads.pop(sid, None)
        return 0

    def on_read(self, sid: int, buf: object, length: int, flags: object) -> int:
        body = self.out.pop(sid, b"")
        ng.ffi.memmove(buf, body, len(body))
        flags[0] |= ng.DATA_FLAG_EOF  # type: ignore[index]
        return len(body)

    def feed(self, data: bytes) -> bytes:
        self.s.recv(data)
        for sid in self.ready:
            self.out[sid] = BODY
            arr, n, keep = ng.nva(ANSWER)
            ng.lib.nghttp2_submit_response(self.s.ptr, sid, arr, n, ng.PROVIDER)
        self.ready.clear()
        return self.s.send()


def run(server_cls: type, rounds: int, streams: int) -> float:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server = server_cls()
    cpu = 0.0
    sid = 1
    data = client.data_to_send()
    for _ in range(rounds):
        for _ in range(streams):
            client.send_headers(sid, request(sid), end_stream=True)
            sid += 2
        data += client.data_to_send()
        t0 = time.process_time()
        out = server.feed(data)
        cpu += time.process_time() - t0
        got = 0
        for ev in client.receive_data(out):
            if isinstance(ev, h2.events.StreamEnded):
                got += 1
            elif isinstance(ev, h2.events.DataReceived):
                client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        assert got == streams, (server_cls.__name__, got)
        data = client.data_to_send()
    return cpu / (rounds * streams) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for _ in range(a.repeat):
        h = run(H2Server, a.rounds, a.streams)
        n = run(NgServer, a.rounds, a.streams)
        print(f"server side, CPU per request: h2 {h:.1f} us, nghttp2 (cffi) {n:.1f} us, ratio {h / n:.1f}x")


if __name__ == "__main__":
    main()
