"""Read a Go CPU profile (`/debug/pprof/profile`, gzipped protobuf) without Go's toolchain: flat and cumulative
time per function, and the time under chosen functions.

Why: the Consul binary here is stripped, so `perf` cannot name its functions, and no Go toolchain is on the
machine; Consul's own profile endpoint (`enable_debug = true`) names them itself. Only the few fields of
the profile format (github.com/google/pprof, proto/profile.proto) that a CPU profile's top needs are read.

    python -m bench.pprof_top profile.pb.gz [--top 30] [--under SyncChanges blockingQuery ...]
"""

from __future__ import annotations

import argparse
import gzip
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7


def _fields(b: bytes):  # type: ignore[no-untyped-def]
    """(field number, wire type, value) of one message: ints for varints, bytes for length-delimited."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = int.from_bytes(b[i:i + 8], "little"), i + 8
        elif wt == 5:
            v, i = int.from_bytes(b[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def _ints(wt: int, v: int | bytes) -> list[int]:
    """A repeated integer field's value: packed (bytes) or one varint."""
    if wt == 0:
        return [v]  # type: ignore[list-item]
    out, i = [], 0
    assert isinstance(v, bytes)
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


@dataclass
class Profile:
    samples: list[tuple[list[int], int]] = field(default_factory=list)  # (location ids leaf first, ns)
    locations: dict[int, list[int]] = field(default_factory=dict)  # id -> function ids, innermost first
    functions: dict[int, str] = field(default_factory=dict)

    @classmethod
    def read(cls, data: bytes) -> Profile:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        p = cls()
        strings: list[bytes] = []
        fn_name: dict[int, int] = {}
        for num, _wt, v in _fields(data):
            if num == 2:  # Sample
                locs, vals = [], []
                for n2, w2, v2 in _fields(v):  # type: ignore[arg-type]
                    if n2 == 1:
                        locs += _ints(w2, v2)
                    elif n2 == 2:
                        vals += _ints(w2, v2)
                p.samples.append((locs, vals[-1] if vals else 0))  # CPU profile: [count, nanoseconds]
            elif num == 4:  # Location
                lid, fns = 0, []
                for n2, _, v2 in _fields(v):  # type: ignore[arg-type]
                    if n2 == 1:
                        lid = v2  # type: ignore[assignment]
                    elif n2 == 4:
                        fns += [v3 for n3, _, v3 in _fields(v2) if n3 == 1]  # type: ignore[arg-type, misc]
                p.locations[lid] = fns
            elif num == 5:  # Function
                fid = name = 0
                for n2, _, v2 in _fields(v):  # type: ignore[arg-type]
                    if n2 == 1:
                        fid = v2  # type: ignore[assignment]
                    elif n2 == 2:
                        name = v2  # type: ignore[assignment]
                fn_name[fid] = name
            elif num == 6:
                strings.append(v)  # type: ignore[arg-type]
        p.functions = {fid: strings[s].decode("utf-8", "replace") for fid, s in fn_name.items()}
        return p

    def total_ns(self) -> int:
        return sum(ns for _, ns in self.samples)

    def stack(self, locs: list[int]) -> list[str]:
        """Function names of one sample, leaf first (inlined frames included)."""
        return [self.functions.get(f, "?") for loc in locs for f in self.locations.get(loc, [])]

    def top(self) -> tuple[Counter[str], Counter[str]]:
        flat: Counter[str] = Counter()
        cum: Counter[str] = Counter()
        for locs, ns in self.samples:
            names = self.stack(locs)
            if names:
                flat[names[0]] += ns
            for n in set(names):
                cum[n] += ns
        return flat, cum

    def under(self, needle: str) -> int:
        """Nanoseconds of the samples with a function whose name contains `needle` on their stack."""
        return sum(ns for locs, ns in self.samples if any(needle in n for n in self.stack(locs)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--under", nargs="*", default=[])
    a = ap.parse_args(argv)
    p = Profile.read(a.profile.read_bytes())
    total = p.total_ns() or 1
    flat, cum = p.top()
    print(f"total {total / 1e6:.0f} ms of CPU in {len(p.samples)} stacks")
    print("cumulative:")
    for name, ns in cum.most_common(a.top):
        print(f"  {ns / 1e6:8.1f} ms {100 * ns / total:5.1f} %  {name}")
    print("flat:")
    for name, ns in flat.most_common(a.top):
        print(f"  {ns / 1e6:8.1f} ms {100 * ns / total:5.1f} %  {name}")
    for needle in a.under:
        ns = p.under(needle)
        print(f"under {needle}: {ns / 1e6:.1f} ms ({100 * ns / total:.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
