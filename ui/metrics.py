"""`/metrics` in Prometheus' text format: the registry's and the table's state, read at scrape time.

A collector rather than gauges that the router keeps updating, so nothing here costs anything between
scrapes and nothing touches the proxy's hot path. Each app gets its own CollectorRegistry so several
routers in one process (tests) do not clash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from router import __version__

if TYPE_CHECKING:
    from prometheus_client import Metric

    from router.cli import Router

PREFIX = "consul_router"


class RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
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
        yield CounterMetricFamily(f"{PREFIX}_upstream_connect_failures", "failed connects to upstream instances",
                                  value=ej.connect_failures)
        yield CounterMetricFamily(f"{PREFIX}_upstream_retries", "requests sent to another instance after a connect "
                                  "failure", value=ej.retries)
        yield CounterMetricFamily(f"{PREFIX}_upstream_ejections", "times an instance was ejected", value=ej.ejections)
        ejected = GaugeMetricFamily(f"{PREFIX}_upstream_ejected", "1 while the instance gets no traffic after "
                                    "consecutive connect failures", labels=["target"])
        for host, port in ej.ejected_targets():
            ejected.add_metric([f"{host}:{port}"], 1.0)
        yield ejected


def registry_for(router: Router) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(router))
    return reg
