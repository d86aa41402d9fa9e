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
from typing import TYPE_CHECKING

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
        yield CounterMetricFamily(f"{PREFIX}_noroute", "requests that matched no route", value=c.get("noroute", 0))
        yield gauge("websockets_open", "WebSocket tunnels open now", float(c.get("websockets_open", 0)))
        yield CounterMetricFamily(f"{PREFIX}_websockets", "WebSocket tunnels opened", value=c.get("websockets_total", 0))
        yield from request_families(route_snapshots(r))
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


def registry_for(router: RouterView) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(router))
    return reg
