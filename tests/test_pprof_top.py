"""Unit tests of bench/pprof_top.py, the Go CPU profile reader the burst benchmark uses (no processes started).

The profile is encoded here by hand in protobuf's wire format (github.com/google/pprof proto/profile.proto:
Profile.sample = 2, .location = 4, .function = 5, .string_table = 6), packed and unpacked, gzipped as
Go's /debug/pprof/profile serves it.
"""

from __future__ import annotations

import gzip

import pytest

from bench.pprof_top import Profile


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    return varint(num << 3 | 2) + varint(len(value)) + value


def packed(num: int, values: list[int]) -> bytes:
    return field(num, b"".join(varint(v) for v in values))


def profile(packed_samples: bool = True) -> bytes:
    strings = [b"", b"samples", b"count", b"cpu", b"nanoseconds", b"main.leaf", b"main.inlined", b"main.caller"]
    fn = [field(5, field(1, i) + field(2, s)) for i, s in ((1, 5), (2, 6), (3, 7))]
    # location 10: main.leaf inlined into main.inlined (two lines, innermost first); location 20: main.caller
    loc = [field(4, field(1, 10) + field(4, field(1, 1)) + field(4, field(1, 2))),
           field(4, field(1, 20) + field(4, field(1, 3)))]

    def sample(locs: list[int], count: int, ns: int) -> bytes:
        if packed_samples:
            return field(2, packed(1, locs) + packed(2, [count, ns]))
        return field(2, b"".join(field(1, x) for x in locs) + field(2, count) + field(2, ns))

    samples = [sample([10, 20], 3, 30_000_000), sample([20], 1, 10_000_000)]
    body = b"".join(samples + loc + fn + [field(6, s) for s in strings])
    return gzip.compress(body)


@pytest.mark.parametrize("packed_samples", [True, False])
def test_profile_totals_flat_and_cumulative(packed_samples: bool) -> None:
    p = Profile.read(profile(packed_samples))
    assert p.total_ns() == 40_000_000  # the last value of each sample: CPU nanoseconds, not the count
    assert p.stack([10, 20]) == ["main.leaf", "main.inlined", "main.caller"]
    flat, cum = p.top()
    assert flat == {"main.leaf": 30_000_000, "main.caller": 10_000_000}
    assert cum["main.caller"] == 40_000_000 and cum["main.inlined"] == 30_000_000
    assert p.under("inlined") == 30_000_000 and p.under("caller") == 40_000_000 and p.under("absent") == 0


def test_uncompressed_profile_reads_the_same() -> None:
    assert Profile.read(gzip.decompress(profile())).total_ns() == 40_000_000
