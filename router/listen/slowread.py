"""A client that advertises a tiny TCP receive window gets a small kernel send buffer.

Why: a slow-read attacker (slowhttptest -X asks for windows of 512-1024 bytes) makes the kernel queue
answer bytes it will not take. The router itself holds at most one read per such client
(router/proxy/upstream_response.py, HIGH_WATER), but the kernel's send buffer is autotuned, and on
loopback (MSS 64 KiB) it starts at tcp_wmem's maximum, 4 MiB here: 200 slow readers of 8 MiB answers put
the machine's TCP memory over its pressure mark (tcp_mem), and then every socket stalls, legitimate
clients' included, for seconds (docs/datapath.md, "Slow clients"). A peer whose window is that small
cannot have more than that in flight, so a send buffer of CAPPED_SNDBUF costs it no throughput, while
every other client keeps the kernel's autotuning (as fabio and Go's net/http leave it: they never set
SO_SNDBUF; docs/compat.md).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

SMALL_WINDOW = 16 * 1024  # a peer's advertised receive window below this marks it as a slow reader
# Answer bytes written on a connection before its peer's window is looked at (or its first wait for the
# kernel, if sooner): only a large answer is worth reading slowly, and a small one pays no getsockopt
# (7 us here, per connection, which a connection per request would pay on every request).
CHECK_AFTER = 64 * 1024
CAPPED_SNDBUF = 64 * 1024  # SO_SNDBUF then (the kernel doubles it for its bookkeeping)
_SND_WND = 228  # offset of tcpi_snd_wnd ("peer's advertised receive window after scaling") in struct tcp_info
_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux only


def peer_window(info: bytes) -> int | None:
    """tcpi_snd_wnd from a TCP_INFO answer; None when the kernel is too old to report it (before 5.x)."""
    if len(info) < _SND_WND + 4:
        return None
    return struct.unpack_from("=I", info, _SND_WND)[0]


def cap_if_slow(sock: Any) -> bool:
    """Cap `sock`'s send buffer when its peer advertises less than SMALL_WINDOW; True if it did. One
    getsockopt per call, once per connection (router/listen/http1_exchange.py `write`, see CHECK_AFTER)."""
    if sock is None or _TCP_INFO is None:
        return False
    try:
        window = peer_window(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256))
        if window is None or window >= SMALL_WINDOW:
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CAPPED_SNDBUF)
    except OSError:  # not TCP (a Unix socket in a test), or closed under us
        return False
    return True
