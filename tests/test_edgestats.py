"""router/run/edgestats.py: the workers' edge counters summed (pure), as the main process shows them."""

from __future__ import annotations

from router.run.edgestats import merge, retired


def snap(conn: int, open_: int, status: dict, buckets: list, updates: int, ports: list) -> dict:
    return {"tcp": {"conn": {"tcp": conn}, "connfail": {}, "noroute": {}, "denied": {},
                    "rx": {("db", ":3306", "tcp://x:1"): 10 * conn}, "tx": {}, "open": open_},
            "grpc": {"requests": conn, "conn": 1, "noroute": 0, "status": status, "seconds": 0.5, "buckets": buckets},
            "certs": {":443;cs=c": ("c", ["a.example.com"], updates, 0)}, "dynamic": ports}


def test_merge_sums_counters_and_unions_ports() -> None:
    m = merge([None, snap(2, 1, {"0": 2}, [1, 1], 1, [7000]), snap(3, 2, {"0": 1, "14": 2}, [0, 3], 2, [7001])])
    assert m["tcp"]["conn"] == {"tcp": 5} and m["tcp"]["open"] == 3
    assert m["tcp"]["rx"] == {("db", ":3306", "tcp://x:1"): 50}
    assert m["grpc"]["status"] == {"0": 3, "14": 2} and m["grpc"]["buckets"] == [1, 4]
    assert (m["grpc"]["requests"], m["grpc"]["conn"], m["grpc"]["seconds"]) == (5, 2, 1.0)
    assert m["certs"] == {":443;cs=c": ("c", ["a.example.com"], 3, 0)} and m["dynamic"] == [7000, 7001]
    assert merge([]) ["tcp"]["open"] == 0 and merge([])["grpc"]["buckets"] == []


def test_an_exited_worker_keeps_its_counts_but_not_its_open_connections() -> None:
    gone = retired(snap(4, 3, {"0": 4}, [4], 1, [7000]))
    assert gone is not None and gone["tcp"]["open"] == 0 and gone["dynamic"] == []
    assert merge([gone, snap(1, 1, {}, [0], 1, [])])["tcp"]["conn"] == {"tcp": 5}
    assert retired(None) is None
