"""`/metrics` in Prometheus' text format: the registry's and the table's state and the proxy's request
counters, read at scrape time.

A collector rather than gauges that the router keeps updating, so nothing here costs anything between
scrapes; the proxy only bumps plain ints (router/proxy/stats.py) and this turns them into metric families.
Request metrics are labelled service, route (host+path of the table) and target (the instance URL), so
their cardinality is bounded by the table, never by raw request paths. Each app gets its own CollectorRegistry so several
routers in one process (tests) do not clash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from router import __version__
from router.proxy.stats import BOUNDS, CLASSES, Key, Snapshot, proxy_counters

if TYPE_CHECKING:
    from prometheus_client import Metric

    from ui.view import RouterView

PREFIX = "consul_router"
LABELS = ["service", "route", "target"]


def route_snapshots(router: RouterView) -> dict[Key, Snapshot]:
    """Per-route counters: the workers' sums, or the in-process proxy's (proxy.workers=1)."""
    pool = getattr(router, "workers", None)
    if pool is not None:
        return pool.route_stats(router.state.table)
    router.proxy.stats.prune(router.state.table)
    return router.proxy.stats.snapshots()


def counters(router: RouterView) -> dict[str, int]:
    """No-route, WebSocket and upstream counters: summed over the workers, or the in-process proxy's."""
    pool = getattr(router, "workers", None)
    return pool.counters() if pool is not None else proxy_counters(router.proxy)


def request_families(snaps: dict[Key, Snapshot]) -> Iterator[Metric]:
    """requests, latency histogram and responses by status class, per (service, route, target)."""
    reqs = CounterMetricFamily(f"{PREFIX}_requests", "proxied requests by route", labels=LABELS)
    hist = HistogramMetricFamily(f"{PREFIX}_request_duration_seconds",
                                 "time from request to the end of the response, by route", labels=LABELS)
    resp = CounterMetricFamily(f"{PREFIX}_responses", "responses by route and status class",
                               labels=[*LABELS, "code"])
    les = [repr(b) for b in BOUNDS] + ["+Inf"]
    for key in sorted(snaps):
        n, total, buckets, classes = snaps[key]
        labels = list(key)
        reqs.add_metric(labels, n)
        cum, acc = [], 0
        for le, c in zip(les, buckets, strict=True):
            acc += c
            cum.append((le, acc))
        hist.add_metric(labels, cum, total)
        for cls, c in zip(CLASSES, classes, strict=True):
            if c:
                resp.add_metric([*labels, cls], c)
    yield reqs
    yield hist
    yield resp


def edge_families(edge: Any) -> Iterator[Metric]:
    """fabio's tcp.* / tcp_sni.* counters and route.rx/route.tx bytes, and each TLS listener's certificates
    (router/run/edge.py); nothing without an edge."""
    if edge is None:
        return
    t = edge.tcp
    for name, doc, values in (("tcp_connections", "TCP connections accepted", t.conn),
                              ("tcp_connect_failures", "TCP connections whose upstream could not be reached "
                               "(or whose ClientHello was not one)", t.connfail),
                              ("tcp_noroute", "TCP connections without a route", t.noroute),
                              ("tcp_denied", "TCP connections refused by allow=/deny=", t.denied)):
        fam = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["kind"])
        for kind, v in sorted(values.items()):
            fam.add_metric([kind], v)
        yield fam
    yield GaugeMetricFamily(f"{PREFIX}_tcp_open", "TCP connections spliced now", value=float(t.open))
    for name, doc, values in (("route_rx_bytes", "bytes from the upstream of a TCP route (fabio's route.rx)", t.rx),
                              ("route_tx_bytes", "bytes to the upstream of a TCP route (fabio's route.tx)", t.tx)):
        fam = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["service", "route", "target"])
        for key, v in sorted(values.items()):
            fam.add_metric(list(key), v)
        yield fam
    g = getattr(edge, "grpc", None)
    if g is not None:  # fabio's grpc.conn, grpc.noroute, grpc.requests (count and durations), grpc.status
        gs = g.stats
        yield CounterMetricFamily(f"{PREFIX}_grpc_requests", "gRPC calls forwarded", value=gs.requests)
        yield CounterMetricFamily(f"{PREFIX}_grpc_connections", "connections accepted on grpc/grpcs listeners",
                                  value=gs.conn)
        yield CounterMetricFamily(f"{PREFIX}_grpc_noroute", "gRPC calls without a route (answered NOT_FOUND)",
                                  value=gs.noroute)
        dur = HistogramMetricFamily(f"{PREFIX}_grpc_request_duration_seconds", "time from a gRPC call's start "
                                    "to its end, through the router")
        acc, cum = 0, []
        for le, c in zip([repr(b) for b in BOUNDS] + ["+Inf"], gs.buckets, strict=True):
            acc += c
            cum.append((le, acc))
        dur.add_metric([], cum, gs.seconds)
        yield dur
        st = CounterMetricFamily(f"{PREFIX}_grpc_status", "gRPC calls by the grpc-status they ended with",
                                 labels=["code"])
        for code, v in sorted(g.stats.status.items()):
            st.add_metric([code], v)
        yield st
    upd = CounterMetricFamily(f"{PREFIX}_tls_certificate_updates", "certificate sets swapped in", labels=["listener"])
    miss = CounterMetricFamily(f"{PREFIX}_tls_no_certificate", "handshakes refused for want of a certificate",
                               labels=["listener"])
    for c in edge.certs:
        upd.add_metric([c.listener.addr], c.updates)
        miss.add_metric([c.listener.addr], c.failed_handshakes)
    yield upd
    yield miss


class RouterCollector(Collector):
    def __init__(self, router: RouterView) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        r = self.router
        st = r.status
        table = r.state.table

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        yield InfoMetricFamily(f"{PREFIX}_build", "version of this router", value={"version": __version__})
        yield gauge("uptime_seconds", "seconds since start", time.time() - r.state.started)
        yield gauge("ready", "1 once the first routing table is loaded", 1.0 if r.state.ready else 0.0)
        yield gauge("routes", "route/target pairs in the current table", float(len(table) if table is not None else 0))
        yield gauge("registry_connected", "1 while the last registry request succeeded", 1.0 if st.connected else 0.0)
        age = st.sync_age()
        yield gauge("registry_last_sync_age_seconds", "seconds since the last successful registry answer (NaN: never)",
                    math.nan if age is None else age)
        yield CounterMetricFamily(f"{PREFIX}_registry_errors", "failed registry (watch) requests", value=st.error_count)
        yield CounterMetricFamily(f"{PREFIX}_registry_requests", "registry requests made", value=st.requests)
        yield gauge("override_errors", "override lines currently skipped", float(len(st.manual_errors)))
        yield gauge("tag_errors", "route tags currently skipped",
                    float(sum(len(s.tag_errors) for s in st.services.values())))
        ej = r.proxy.ejector
        c = counters(r)
        yield CounterMetricFamily(f"{PREFIX}_upstream_connect_failures", "failed connects to upstream instances",
                                  value=c.get("connect_failures", 0))
        yield CounterMetricFamily(f"{PREFIX}_upstream_retries", "requests sent to another instance after a connect "
                                  "failure", value=c.get("retries", 0))
        yield CounterMetricFamily(f"{PREFIX}_upstream_ejections", "times an instance was ejected",
                                  value=c.get("ejections", 0))
        pool = getattr(r, "workers", None)
        yield from resilience_families(pool.instance_docs() if pool is not None else r.proxy.ejector.instance_docs(), c)
        yield CounterMetricFamily(f"{PREFIX}_noroute", "requests that matched no route", value=c.get("noroute", 0))
        yield CounterMetricFamily(f"{PREFIX}_ratelimited", "requests answered 429 by a route's ratelimit=",
                                  value=c.get("ratelimited", 0))
        yield CounterMetricFamily(f"{PREFIX}_compressed_bytes_in", "response bytes before compression",
                                  value=c.get("compressed_in", 0))
        yield CounterMetricFamily(f"{PREFIX}_compressed_bytes_saved", "response bytes saved by compression",
                                  value=c.get("compressed_in", 0) - c.get("compressed_out", 0))
        yield CounterMetricFamily(f"{PREFIX}_sticky_hits", "requests sent to the instance their sticky cookie names",
                                  value=c.get("sticky_hits", 0))
        yield CounterMetricFamily(f"{PREFIX}_sticky_repins", "sticky cookies naming an instance that is gone or "
                                  "ejected: the client was pinned anew", value=c.get("sticky_repins", 0))
        yield gauge("websockets_open", "WebSocket tunnels open now", float(c.get("websockets_open", 0)))
        yield CounterMetricFamily(f"{PREFIX}_websockets", "WebSocket tunnels opened", value=c.get("websockets_total", 0))
        yield from request_families(route_snapshots(r))
        yield from edge_families(getattr(r, "edge", None))
        prop = GaugeMetricFamily(f"{PREFIX}_propagation_delay_ms", "registry change to table swap, over the last "
                                 "256 changes (quantile 1 = max)", labels=["quantile"])
        summary = st.propagation_summary()
        for q, name in (("0.5", "p50_ms"), ("0.9", "p90_ms"), ("1", "max_ms")):
            v = summary[name]
            if v is not None:
                prop.add_metric([q], float(v))
        yield prop
        yield CounterMetricFamily(f"{PREFIX}_propagations", "table swaps after a registry change",
                                  value=st.propagation_count)
        ejected = GaugeMetricFamily(f"{PREFIX}_upstream_ejected", "proxy processes in which the instance gets no "
                                    "traffic after consecutive connect failures (1 with one worker)", labels=["target"])
        pool = getattr(r, "workers", None)
        now = pool.ejected_targets() if pool is not None else dict.fromkeys(ej.ejected_targets(), 1)
        for (host, port), n in sorted(now.items()):
            ejected.add_metric([f"{host}:{port}"], float(n))
        yield ejected


def resilience_families(docs: dict[str, dict[str, Any]], c: dict[str, int]) -> Iterator[Metric]:
    """Issue 17: hedges, budget refusals, and each instance's in-flight count and latency estimate (summed
    and the highest over the workers: router/proxy/balance.py merge_docs)."""
    yield CounterMetricFamily(f"{PREFIX}_upstream_hedges", "second connects or requests sent to another instance "
                              "while the first had not answered", value=c.get("hedges", 0))
    yield CounterMetricFamily(f"{PREFIX}_upstream_stalls", "tries ended because their instance sent no response "
                              "headers for proxy.stall.timeout while several requests waited", value=c.get("stalls", 0))
    yield CounterMetricFamily(f"{PREFIX}_upstream_retry_budget_exhausted", "retries or hedges refused by the "
                              "route's retry budget (proxy.retry.budget)", value=c.get("budget_exhausted", 0))
    yield CounterMetricFamily(f"{PREFIX}_upstream_inflight_full", "requests answered 503 because every instance "
                              "had proxy.maxinflight requests in flight", value=c.get("inflight_full", 0))
    inflight = GaugeMetricFamily(f"{PREFIX}_upstream_in_flight", "requests in flight to the instance",
                                 labels=["instance", "target"])
    latency = GaugeMetricFamily(f"{PREFIX}_upstream_latency_estimate_seconds", "the picker's latency estimate "
                                "for the instance (0: nothing recent)", labels=["instance", "target"])
    for key in sorted(docs):
        source, _, addr = key.rpartition("|")
        inflight.add_metric([source, addr], float(docs[key]["in_flight"]))
        latency.add_metric([source, addr], docs[key]["latency_ms"] / 1000.0)
    yield inflight
    yield latency


def registry_for(router: RouterView) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(router))
    return reg
