"""libnghttp2 (the C HTTP/2 library curl uses; Debian's `libnghttp2-14`) through cffi in ABI mode: the
protocol engine of the HTTP/2 listener (router/listen/h2proto.py) and of the gRPC upstream client
(router/proxy/h2client.py).

Why a C engine: python-hyper's `h2` cost more CPU per request than the whole HTTP/1.1 exchange (frame
parsing, HPACK, per-header generator checks), and gRPC runs two engines per call; nghttp2 does the same work
for a few microseconds (the figures: docs/benchmarks.md, "HTTP/2 engine"). It also brings its own defences:
HTTP messaging rules (pseudo-headers, connection-specific headers, content-length), the CONTINUATION flood
bound, the outbound-ACK bound and a stream reset rate limit.

Only the declarations we use are written here (ABI mode: no headers or compiler needed), after nghttp2's
documented API (1.52, the version Debian 12 ships; the struct layouts are its ABI, stable since 1.0).

The callbacks are created once for the process. Each session's `user_data` is a small integer key into
`SESSIONS` (not a cffi handle, which would make a reference cycle per connection that only a full garbage
collection frees): a callback finds its Python object there; the object's `on_*` methods do the work.
Arguments a callback does not dereference are declared as integers (`uintptr_t`), which cffi converts for
less than the pointer cdata it would build otherwise (~0.9 us of ~2.5 per header callback).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Protocol

import _cffi_backend
from cffi import FFI

log = logging.getLogger("router.h2")
ffi = FFI()
ffi.cdef("""
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;
typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags; uint8_t reserved; } nghttp2_frame_hd;
typedef struct { int32_t stream_id; int32_t weight; uint8_t exclusive; } nghttp2_priority_spec;
typedef struct { nghttp2_frame_hd hd; size_t padlen; nghttp2_priority_spec pri_spec; nghttp2_nv *nva;
                 size_t nvlen; int cat; } nghttp2_headers;
typedef struct { nghttp2_frame_hd hd; uint32_t error_code; } nghttp2_rst_stream;
typedef struct { nghttp2_frame_hd hd; int32_t last_stream_id; uint32_t error_code; uint8_t *opaque_data;
                 size_t opaque_data_len; uint8_t reserved; } nghttp2_goaway;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
typedef union { int fd; void *ptr; } nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(uintptr_t, int32_t, uint8_t *, size_t, uint32_t *,
                                                       uintptr_t, uintptr_t);
typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; } nghttp2_data_provider;

typedef int (*nghttp2_on_frame_recv_callback)(uintptr_t, const nghttp2_headers *, uintptr_t);
typedef int (*nghttp2_on_begin_headers_callback)(uintptr_t, const nghttp2_frame_hd *, uintptr_t);
typedef int (*nghttp2_on_header_callback)(uintptr_t, uintptr_t, const char *, size_t, const char *, size_t,
                                          uint8_t, uintptr_t);
typedef int (*nghttp2_on_data_chunk_recv_callback)(uintptr_t, uint8_t, int32_t, const char *, size_t, uintptr_t);
typedef int (*nghttp2_on_stream_close_callback)(uintptr_t, int32_t, uint32_t, uintptr_t);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **);
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *, nghttp2_on_frame_recv_callback);
void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *,
                                                             nghttp2_on_begin_headers_callback);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, nghttp2_on_header_callback);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                               nghttp2_on_data_chunk_recv_callback);
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *,
                                                            nghttp2_on_stream_close_callback);

int nghttp2_option_new(nghttp2_option **);
void nghttp2_option_del(nghttp2_option *);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *, int);

int nghttp2_session_server_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *, const nghttp2_option *);
int nghttp2_session_client_new2(nghttp2_session **, const nghttp2_session_callbacks *, void *, const nghttp2_option *);
void nghttp2_session_del(nghttp2_session *);
ssize_t nghttp2_session_mem_recv(nghttp2_session *, const char *, size_t);
ssize_t nghttp2_session_mem_send(nghttp2_session *, const char **);
int nghttp2_session_want_read(nghttp2_session *);
int nghttp2_session_want_write(nghttp2_session *);
int nghttp2_session_consume(nghttp2_session *, int32_t, size_t);
int nghttp2_session_resume_data(nghttp2_session *, int32_t);
int nghttp2_session_terminate_session(nghttp2_session *, uint32_t);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *, int);

int nghttp2_submit_settings(nghttp2_session *, uint8_t, const nghttp2_settings_entry *, size_t);
int nghttp2_submit_response(nghttp2_session *, int32_t, const nghttp2_nv *, size_t, const nghttp2_data_provider *);
int32_t nghttp2_submit_request(nghttp2_session *, const void *, const nghttp2_nv *, size_t,
                               const nghttp2_data_provider *, void *);
int nghttp2_submit_trailer(nghttp2_session *, int32_t, const nghttp2_nv *, size_t);
int nghttp2_submit_rst_stream(nghttp2_session *, uint8_t, int32_t, uint32_t);
int nghttp2_submit_goaway(nghttp2_session *, uint8_t, int32_t, uint32_t, const uint8_t *, size_t);
const char *nghttp2_strerror(int);
""")

LIBRARY = "libnghttp2.so.14"


def _load() -> Any:
    """The system's library (`make deps` installs Debian's package when missing), else the copy the
    container image puts in the venv's lib/ (Dockerfile: its final stage runs no package manager)."""
    try:
        return ffi.dlopen(LIBRARY)
    except OSError:
        local = os.path.join(sys.prefix, "lib", LIBRARY)
        if os.path.exists(local):
            return ffi.dlopen(local)
        raise OSError(f"{LIBRARY} not found: install Debian's libnghttp2-14 (make deps does)") from None


lib: Any = _load()

# frame types, flags, error codes, settings (RFC 9113) and nghttp2's own return values
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
FLAG_END_STREAM, FLAG_ACK = 0x1, 0x1
HCAT_REQUEST, HCAT_RESPONSE, HCAT_HEADERS = 0, 1, 3
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0, 1, 2, 7, 8, 0xB
SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE = 2, 3, 6
ERR_DEFERRED = -508
ERR_TEMPORAL_CALLBACK_FAILURE = -521
ERR_CALLBACK_FAILURE = -902
DATA_FLAG_EOF, DATA_FLAG_NO_END_STREAM = 0x1, 0x2
NULL = ffi.NULL


class Engine(Protocol):
    """What a session's owner implements: called from inside mem_recv / mem_send."""

    def on_begin_headers(self, sid: int) -> int: ...
    def on_header(self, name: bytes, value: bytes) -> int: ...  # of the block on_begin_headers announced
    def on_frame(self, kind: int, flags: int, sid: int, frame: Any) -> int: ...
    def on_data(self, sid: int, data: bytes) -> int: ...
    def on_close(self, sid: int, code: int) -> int: ...
    def on_read(self, sid: int, buf: Any, length: int, flags: Any) -> int: ...


SESSIONS: dict[int, Engine] = {}  # keyed by the session's user_data (a small integer, passed as a pointer)
_next_key = [0]
_unpack = _cffi_backend.unpack  # ffi.unpack and ffi.memmove are Python wrappers around these
memmove = _cffi_backend.memmove
_owner = SESSIONS.get


def _failed(kind: type, exc: BaseException, tb: Any) -> None:
    """An exception in one of our callbacks: logged; nghttp2 gets an error code (the connection ends, or
    for the read callback the stream is reset) instead of a silent 0."""
    log.error("nghttp2 callback failed", exc_info=(kind, exc, tb))


@ffi.callback("nghttp2_on_begin_headers_callback", error=ERR_CALLBACK_FAILURE, onerror=_failed)
def _on_begin_headers(session: Any, hd: Any, ud: Any) -> int:
    o = _owner(ud)
    return o.on_begin_headers(hd.stream_id) if o is not None else 0


@ffi.callback("nghttp2_on_header_callback", error=ERR_CALLBACK_FAILURE, onerror=_failed)
def _on_header(session: Any, hd: Any, name: Any, nlen: int, value: Any, vlen: int, flags: int, ud: Any) -> int:
    o = _owner(ud)
    return o.on_header(_unpack(name, nlen), _unpack(value, vlen)) if o is not None else 0


@ffi.callback("nghttp2_on_frame_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_failed)
def _on_frame(session: int, frame: Any, ud: int) -> int:
    """`frame` is declared as a HEADERS frame (every frame struct starts with its header, `hd`, and a cast per
    call costs more than this): `frame.cat` means something for HEADERS only; of the others only `hd` is read."""
    o = _owner(ud)
    if o is None:
        return 0
    hd = frame.hd
    return o.on_frame(hd.type, hd.flags, hd.stream_id, frame)


@ffi.callback("nghttp2_on_data_chunk_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_failed)
def _on_data(session: Any, flags: int, sid: int, data: Any, n: int, ud: Any) -> int:
    o = _owner(ud)
    return o.on_data(sid, _unpack(data, n)) if o is not None else 0


@ffi.callback("nghttp2_on_stream_close_callback", error=ERR_CALLBACK_FAILURE, onerror=_failed)
def _on_close(session: Any, sid: int, code: int, ud: Any) -> int:
    o = _owner(ud)
    return o.on_close(sid, code) if o is not None else 0


@ffi.callback("nghttp2_data_source_read_callback", error=ERR_TEMPORAL_CALLBACK_FAILURE, onerror=_failed)
def _on_read(session: Any, sid: int, buf: Any, length: int, flags: Any, source: Any, ud: Any) -> int:
    o = _owner(ud)
    return o.on_read(sid, buf, length, flags) if o is not None else ERR_TEMPORAL_CALLBACK_FAILURE


def _callbacks() -> Any:
    p = ffi.new("nghttp2_session_callbacks **")
    if lib.nghttp2_session_callbacks_new(p) != 0:
        raise MemoryError("nghttp2_session_callbacks_new")
    cbs = p[0]
    lib.nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _on_begin_headers)
    lib.nghttp2_session_callbacks_set_on_header_callback(cbs, _on_header)
    lib.nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _on_frame)
    lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _on_data)
    lib.nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _on_close)
    return cbs  # lives as long as the process (one for every session)


CALLBACKS = _callbacks()
PROVIDER = ffi.new("nghttp2_data_provider *")  # nghttp2 copies it on submit; one read callback for all streams
PROVIDER.read_callback = _on_read


class Session:
    """One nghttp2 session (server or client side), its owner reachable from the callbacks between
    `open(owner)` and `close()`; the C session itself is freed when this object is (ffi.gc, with the owner
    that holds it: no reference back, so no cycle waiting for the collector), and a late call on it can
    never touch freed memory."""

    __slots__ = ("ptr", "key")

    def __init__(self, server: bool) -> None:
        opt_p = ffi.new("nghttp2_option **")
        if lib.nghttp2_option_new(opt_p) != 0:
            raise MemoryError("nghttp2_option_new")
        opt = opt_p[0]
        try:
            lib.nghttp2_option_set_no_auto_window_update(opt, 1)  # credit goes back as the consumer reads
            _next_key[0] += 1
            self.key = _next_key[0]
            p = ffi.new("nghttp2_session **")
            new = lib.nghttp2_session_server_new2 if server else lib.nghttp2_session_client_new2
            if new(p, CALLBACKS, ffi.cast("void *", self.key), opt) != 0:
                raise MemoryError("nghttp2_session_new")
        finally:
            lib.nghttp2_option_del(opt)
        self.ptr = ffi.gc(p[0], lib.nghttp2_session_del)

    def open(self, owner: Engine) -> None:
        """Let nghttp2's callbacks reach the owner: from its connection_made (asyncio then promises a
        connection_lost, which calls close(); a protocol whose connection never came is not held here)."""
        SESSIONS[self.key] = owner

    def close(self) -> None:
        SESSIONS.pop(self.key, None)

    def settings(self, values: dict[int, int]) -> None:
        iv = ffi.new("nghttp2_settings_entry[]", len(values))
        for i, (k, v) in enumerate(values.items()):
            iv[i].settings_id, iv[i].value = k, v
        lib.nghttp2_submit_settings(self.ptr, 0, iv, len(values))

    def recv(self, data: bytes) -> int:
        return lib.nghttp2_session_mem_recv(self.ptr, data, len(data))

    def send(self) -> bytes:
        """Everything nghttp2 has to write now, as one bytes (several mem_send calls when it is large)."""
        out = []
        p = _OUT
        while True:
            n = lib.nghttp2_session_mem_send(self.ptr, p)
            if n <= 0:
                break
            out.append(_unpack(p[0], n))
        return out[0] if len(out) == 1 else b"".join(out)

    def alive(self) -> bool:
        return bool(lib.nghttp2_session_want_read(self.ptr) or lib.nghttp2_session_want_write(self.ptr))


_OUT = ffi.new("const char **")  # single-threaded: one event loop per process


def nva(headers: list[tuple[bytes, bytes]]) -> tuple[Any, int, Any]:
    """(nghttp2_nv array, count, what keeps the bytes alive) for `headers`: the names and values are joined
    into one buffer the array points into (nghttp2 copies them on submit, so it need only outlive that)."""
    n = len(headers)
    arr = _new(_NV_ARRAY, n)
    blob = b"".join([b for nv in headers for b in nv])
    buf = _from_buffer(_U8_ARRAY, blob, False)
    off = 0
    for i, (name, value) in enumerate(headers):
        nv = arr[i]
        nl, vl = len(name), len(value)
        nv.name = buf + off
        nv.namelen = nl
        off += nl
        nv.value = buf + off
        nv.valuelen = vl
        off += vl
    return arr, n, buf


_new = _cffi_backend.newp
_from_buffer = _cffi_backend.from_buffer
_NV_ARRAY = ffi.typeof("nghttp2_nv[]")
_U8_ARRAY = ffi.typeof("uint8_t[]")


def feed(st: Any, buf: Any, length: int, high: int) -> int:
    """A data provider's read, for either side (the listener's answers, the gRPC client's requests): move up to
    `length` of the stream's queued bytes (`st.out`) into nghttp2's `buf` and wake a writer (`st.waiter`) once
    fewer than `high` are left. The count; ERR_DEFERRED when none is queued and more is to come (the writer
    resumes the stream). Ending the stream (`st.eof` and nothing left) is the caller's: only it knows whether
    trailers follow."""
    out = st.out
    n = len(out)
    if n > length:
        n = length
    if n:
        memmove(buf, out, n)
        del out[:n]
    elif not out and not st.eof:
        return ERR_DEFERRED
    if st.waiter is not None and len(out) < high:
        st.wake()
    return n


def strerror(code: int) -> str:
    return ffi.string(lib.nghttp2_strerror(code)).decode()
